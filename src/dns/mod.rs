//! Reverse DNS with forward confirmation (FCrDNS) for HAT matching, on hickory-resolver; also
//! the plain A lookups of DNS block lists ([`crate::dns::dnsbl`]) and the MX and A/AAAA lookups
//! of `mx_lookup` routes ([`crate::relay::mx`]), and the TXT and TLSA lookups of the DNS
//! self-check ([`records`]), on the same resolver.
//!
//! Only the configured servers answer: the library's hosts-file answers are off, and names it
//! would answer by itself (`localhost`, the PTR of 127/8 and ::1) are asked of the servers
//! too. A hosts file is read only when `dns.hosts_file` names one ([`HostsFile`]).

pub(crate) mod dnsbl;
pub(crate) mod hosts;
pub(crate) mod name;
pub(crate) mod records;

#[cfg(test)]
use std::net::SocketAddr;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::FirstAnswer;
use hickory_resolver::net::DnsHandle;
use hickory_resolver::proto::op::{DnsRequestOptions, Query, ResponseCode};
use hickory_resolver::proto::rr::domain::usage::{IN_ADDR_ARPA_127, IP6_ARPA_1, LOCALHOST};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{NameServerPool, PoolContext, TlsConfig, TokioResolver};

use crate::config::model::DnsSettings;
use crate::dns::hosts::HostsFile;
use crate::policy::hat::ReverseDns;

/// Errors building the resolver.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The resolver could not be constructed (bad system configuration).
    #[error("DNS resolver: {0}")]
    Build(String),
}

/// Outcome of one bounded A lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ALookup {
    /// The name exists with these IPv4 addresses.
    Found(Vec<Ipv4Addr>),
    /// NXDOMAIN or no A record.
    NotFound,
    /// Timeout or server failure; the text says which.
    Failed(String),
}

/// One MX record: preference and exchange (lower case, no trailing dot; `""` for the root, `.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MxRecord {
    /// Lower is tried first.
    pub(crate) preference: u16,
    /// The exchange host name; empty for the RFC 7505 null MX target `.`.
    pub(crate) exchange: String,
}

/// Outcome of one bounded MX lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MxLookup {
    /// The name has these MX records.
    Found(Vec<MxRecord>),
    /// NXDOMAIN or no MX record.
    NotFound,
    /// Timeout or server failure; the text says which.
    Failed(String),
}

/// Outcome of one bounded A/AAAA lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IpLookup {
    /// The name has these addresses (IPv4 first, then IPv6 when there is no IPv4).
    Found(Vec<IpAddr>),
    /// NXDOMAIN or no A/AAAA record.
    NotFound,
    /// Timeout or server failure; the text says which.
    Failed(String),
}

/// `name` fully qualified, so that no search domain is tried.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// One query's outcome.
enum Answer {
    Records(Vec<RData>),
    NotFound,
    Failed,
}

/// Resolver used for every connection's PTR and forward lookups.
#[derive(Clone)]
pub struct ReverseResolver {
    resolver: TokioResolver,
    /// The same servers, asked directly for the names the library answers by itself.
    direct: NameServerPool<TokioRuntimeProvider>,
    /// `dns.hosts_file`, when configured.
    hosts: Option<Arc<HostsFile>>,
    timeout: Duration,
}

impl std::fmt::Debug for ReverseResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReverseResolver")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ReverseResolver {
    /// Builds a resolver on the configured servers (or the system's when none are configured),
    /// reading `dns.hosts_file` when set.
    pub fn new(settings: &DnsSettings) -> Result<Self, DnsError> {
        let mut opts = ResolverOpts::default();
        opts.timeout = settings.timeout;
        opts.attempts = 1;
        opts.use_hosts_file = ResolveHosts::Never;
        let config = if settings.resolvers.is_empty() {
            hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| DnsError::Build(e.to_string()))?
                .0
        } else {
            let servers = settings
                .resolvers
                .iter()
                .map(|sa| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = sa.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = sa.port();
                    NameServerConfig::new(sa.ip(), true, vec![udp, tcp])
                })
                .collect();
            ResolverConfig::from_name_servers(servers)
        };
        let tls = TlsConfig::new().map_err(|e| DnsError::Build(e.to_string()))?;
        let direct = NameServerPool::from_config(
            config.name_servers().to_vec(),
            Arc::new(PoolContext::new(opts.clone(), tls)),
            TokioRuntimeProvider::default(),
        );
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| DnsError::Build(e.to_string()))?;
        let hosts = match &settings.hosts_file {
            Some(path) => Some(Arc::new(HostsFile::read(path).map_err(|e| {
                DnsError::Build(format!("hosts file {}: {e}", path.display()))
            })?)),
            None => None,
        };
        Ok(ReverseResolver {
            resolver,
            direct,
            hosts,
            timeout: settings.timeout,
        })
    }

    /// Asks the servers: the library's cache for ordinary names, the servers directly for
    /// the names the library would answer by itself.
    async fn query(&self, name: Name, rtype: RecordType) -> Answer {
        let special = [&*LOCALHOST, &*IN_ADDR_ARPA_127, &*IP6_ARPA_1]
            .iter()
            .any(|zone| zone.zone_of(&name));
        if special {
            let query = Query::query(name, rtype);
            return match self
                .direct
                .lookup(query, DnsRequestOptions::default())
                .first_answer()
                .await
            {
                Ok(r) if r.response_code == ResponseCode::NXDomain => Answer::NotFound,
                Ok(r) if r.response_code == ResponseCode::NoError => {
                    let data: Vec<RData> = r
                        .answers
                        .iter()
                        .filter(|a| a.record_type() == rtype)
                        .map(|a| a.data.clone())
                        .collect();
                    if data.is_empty() {
                        Answer::NotFound
                    } else {
                        Answer::Records(data)
                    }
                }
                // The pool reports NXDOMAIN and empty answers as errors too.
                Err(e) if e.is_nx_domain() || e.is_no_records_found() => Answer::NotFound,
                _ => Answer::Failed,
            };
        }
        match self.resolver.lookup(name, rtype).await {
            Ok(l) => Answer::Records(l.answers().iter().map(|r| r.data.clone()).collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Answer::NotFound,
            Err(_) => Answer::Failed,
        }
    }

    /// A resolver on 127.0.0.1:53, for unit tests that need one but never look anything up
    /// (the system configuration may be missing on a test machine).
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self::new(&DnsSettings {
            resolvers: vec![SocketAddr::from(([127, 0, 0, 1], 53))],
            timeout: Duration::from_secs(1),
            hosts_file: None,
            self_check_interval: Duration::ZERO,
        })
        .expect("resolver on 127.0.0.1:53")
    }

    /// The hickory resolver (and its cache) behind this one, for mail-auth (`src/auth/`).
    pub(crate) fn hickory(&self) -> TokioResolver {
        self.resolver.clone()
    }

    /// The per-lookup timeout (`dns.timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A records of the fully qualified `name` (trailing dot: no search domains), bounded by
    /// the configured timeout like [`ReverseResolver::lookup`].
    pub(crate) async fn lookup_a(&self, name: &str) -> ALookup {
        let query = async {
            match self.resolver.ipv4_lookup(name).await {
                Ok(l) => {
                    let addrs: Vec<Ipv4Addr> = l
                        .answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::A(a) => Some(a.0),
                            _ => None,
                        })
                        .collect();
                    if addrs.is_empty() {
                        ALookup::NotFound
                    } else {
                        ALookup::Found(addrs)
                    }
                }
                Err(e) if e.is_nx_domain() || e.is_no_records_found() => ALookup::NotFound,
                Err(e) => ALookup::Failed(e.to_string()),
            }
        };
        match tokio::time::timeout(self.timeout, query).await {
            Ok(r) => r,
            Err(_) => ALookup::Failed(format!("timeout after {:?}", self.timeout)),
        }
    }

    /// MX records of `name`, bounded by the configured timeout.
    pub(crate) async fn lookup_mx(&self, name: &str) -> MxLookup {
        let query = async {
            match self.resolver.mx_lookup(fqdn(name)).await {
                Ok(l) => {
                    let records: Vec<MxRecord> = l
                        .answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::MX(mx) => Some(MxRecord {
                                preference: mx.preference,
                                exchange: mx
                                    .exchange
                                    .to_ascii()
                                    .trim_end_matches('.')
                                    .to_ascii_lowercase(),
                            }),
                            _ => None,
                        })
                        .collect();
                    if records.is_empty() {
                        MxLookup::NotFound
                    } else {
                        MxLookup::Found(records)
                    }
                }
                Err(e) if e.is_nx_domain() || e.is_no_records_found() => MxLookup::NotFound,
                Err(e) => MxLookup::Failed(e.to_string()),
            }
        };
        match tokio::time::timeout(self.timeout, query).await {
            Ok(r) => r,
            Err(_) => MxLookup::Failed(format!("timeout after {:?}", self.timeout)),
        }
    }

    /// A (else AAAA) addresses of `name`, bounded by the configured timeout.
    pub(crate) async fn lookup_ip(&self, name: &str) -> IpLookup {
        if let Some(addrs) = self.hosts.as_ref().and_then(|h| h.addresses(name)) {
            return IpLookup::Found(addrs.to_vec());
        }
        let query = async {
            match self.resolver.lookup_ip(fqdn(name)).await {
                Ok(l) => {
                    let addrs: Vec<IpAddr> = l.iter().collect();
                    if addrs.is_empty() {
                        IpLookup::NotFound
                    } else {
                        IpLookup::Found(addrs)
                    }
                }
                Err(e) if e.is_nx_domain() || e.is_no_records_found() => IpLookup::NotFound,
                Err(e) => IpLookup::Failed(e.to_string()),
            }
        };
        match tokio::time::timeout(self.timeout, query).await {
            Ok(r) => r,
            Err(_) => IpLookup::Failed(format!("timeout after {:?}", self.timeout)),
        }
    }

    /// PTR, then forward A/AAAA of each name must contain `ip`. The whole lookup is bounded by
    /// the configured timeout; a timeout counts as a temporary failure.
    pub async fn lookup(&self, ip: IpAddr) -> ReverseDns {
        match tokio::time::timeout(self.timeout, self.lookup_inner(ip)).await {
            Ok(r) => r,
            Err(_) => ReverseDns::TempFail,
        }
    }

    async fn lookup_inner(&self, ip: IpAddr) -> ReverseDns {
        let names: Vec<String> = match self.hosts.as_ref().and_then(|h| h.names(ip)) {
            Some(names) => names.to_vec(),
            None => match self.query(Name::from(ip), RecordType::PTR).await {
                Answer::Records(data) => data
                    .iter()
                    .filter_map(|d| match d {
                        RData::PTR(p) => {
                            Some(p.0.to_ascii().trim_end_matches('.').to_ascii_lowercase())
                        }
                        _ => None,
                    })
                    .collect(),
                Answer::NotFound => return ReverseDns::Missing,
                Answer::Failed => return ReverseDns::TempFail,
            },
        };
        let Some(first) = names.first().cloned() else {
            return ReverseDns::Missing;
        };
        // Only a few PTR names are checked: a host with dozens is not worth the lookups.
        for name in names.iter().take(3) {
            match self.confirms(name, ip).await {
                Some(true) => return ReverseDns::Verified(name.clone()),
                Some(false) => {}
                None => return ReverseDns::TempFail,
            }
        }
        ReverseDns::Mismatch(first)
    }

    /// Whether `name` has `ip` among its addresses (`None`: the lookup failed). Only the
    /// client's address family is asked: the other cannot confirm it, and a server that
    /// never answers it must not hold the connection up. A name in the hosts file is
    /// answered from the file alone.
    async fn confirms(&self, name: &str, ip: IpAddr) -> Option<bool> {
        if let Some(addrs) = self.hosts.as_ref().and_then(|h| h.addresses(name)) {
            return Some(addrs.contains(&ip));
        }
        let Ok(fq) = Name::from_ascii(fqdn(name)) else {
            return Some(false);
        };
        let rtype = if ip.is_ipv4() {
            RecordType::A
        } else {
            RecordType::AAAA
        };
        match self.query(fq, rtype).await {
            Answer::Records(data) => Some(data.iter().any(|d| d.ip_addr() == Some(ip))),
            Answer::NotFound => Some(false),
            Answer::Failed => None,
        }
    }
}
