//! Outbound configuration (docs/relay.md): SMTP routes and destination controls, validated.
//!
//! These are the types the delivery engine runs on. They are built by
//! `config::routes` from `policies/routes.yaml` and `policies/destinations.yaml`;
//! everything here is pure (no I/O).
//!
//! Domain precedence, for routes and destination controls alike: an exact
//! domain beats a `.suffix` entry, a longer suffix beats a shorter one, and
//! `ALL` (or the destination `default`) comes last.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::dns::name::is_host_name;

/// Outbound TLS mode of a destination (ESA `destconfig`; docs/relay.md, "Outbound TLS modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboundTls {
    /// Never STARTTLS.
    No,
    /// STARTTLS when offered; plaintext if negotiation fails before the 220
    /// reply to STARTTLS; certificate not checked.
    Preferred,
    /// STARTTLS must succeed; certificate not checked.
    Required,
    /// As `Preferred`, and the certificate is checked; a failed check still
    /// delivers over the encrypted session (and is logged).
    PreferredVerify,
    /// TLS must succeed and the certificate must chain to a trusted CA and
    /// match the destination.
    RequiredVerify,
    /// As `RequiredVerify`, identity from subjectAltName dNSName entries; the
    /// subject CN only when the certificate has no dNSName SAN at all.
    RequiredVerifyHosted,
}

impl OutboundTls {
    /// Every mode, in the order of ESA's menu.
    pub const ALL: [OutboundTls; 6] = [
        OutboundTls::No,
        OutboundTls::Preferred,
        OutboundTls::Required,
        OutboundTls::PreferredVerify,
        OutboundTls::RequiredVerify,
        OutboundTls::RequiredVerifyHosted,
    ];

    /// Name used in configuration, output and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundTls::No => "no",
            OutboundTls::Preferred => "preferred",
            OutboundTls::Required => "required",
            OutboundTls::PreferredVerify => "preferred-verify",
            OutboundTls::RequiredVerify => "required-verify",
            OutboundTls::RequiredVerifyHosted => "required-verify-hosted",
        }
    }

    /// True when mail must not be sent without TLS (the `required*` modes).
    pub fn is_required(self) -> bool {
        matches!(
            self,
            OutboundTls::Required | OutboundTls::RequiredVerify | OutboundTls::RequiredVerifyHosted
        )
    }

    /// True when the server certificate is checked (the `*-verify*` modes).
    pub fn verifies(self) -> bool {
        matches!(
            self,
            OutboundTls::PreferredVerify
                | OutboundTls::RequiredVerify
                | OutboundTls::RequiredVerifyHosted
        )
    }

    /// True when STARTTLS is attempted at all (every mode but `no`).
    pub(crate) fn uses_starttls(self) -> bool {
        self != OutboundTls::No
    }
}

impl fmt::Display for OutboundTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutboundTls {
    type Err = String;

    /// Parses a mode name; the error lists the six modes.
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        OutboundTls::ALL
            .into_iter()
            .find(|m| m.as_str() == t)
            .ok_or_else(|| {
                format!(
                    "unknown outbound TLS mode {t:?}: expected no, preferred, required, \
                     preferred-verify, required-verify or required-verify-hosted"
                )
            })
    }
}

/// Which destination domains an entry covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DomainMatch {
    /// Exactly this domain (lower case, no trailing dot), not its subdomains.
    Exact(String),
    /// Every subdomain of this domain (written `.example.com`; stored without
    /// the leading dot), not the domain itself.
    Subdomains(String),
    /// Every domain (`ALL`, or the destination `default`).
    All,
}

impl DomainMatch {
    /// Parses `example.com`, `.example.com` or `ALL` (any case); the name is
    /// lower-cased and a trailing dot dropped.
    pub fn parse(s: &str) -> Result<DomainMatch, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("all") {
            return Ok(DomainMatch::All);
        }
        let lower = t.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        if name.is_empty() {
            return Err("domain is empty: write example.com, .example.com or ALL".into());
        }
        if let Some(rest) = name.strip_prefix('.') {
            if is_host_name(rest) {
                return Ok(DomainMatch::Subdomains(rest.to_string()));
            }
            return Err(format!(
                "{t:?} is not a valid .subdomain form (e.g. .example.com)"
            ));
        }
        if is_host_name(name) {
            return Ok(DomainMatch::Exact(name.to_string()));
        }
        Err(format!(
            "{t:?} is not a domain: write example.com, .example.com (every subdomain) or ALL"
        ))
    }

    /// True when `domain` (any case, trailing dot allowed) is covered.
    ///
    /// `.example.com` covers `a.example.com` and `a.b.example.com`, but not
    /// `example.com` itself nor `badexample.com`.
    pub fn matches(&self, domain: &str) -> bool {
        let d = domain.strip_suffix('.').unwrap_or(domain);
        match self {
            DomainMatch::Exact(x) => d.eq_ignore_ascii_case(x),
            DomainMatch::Subdomains(base) => {
                d.len() > base.len() + 1
                    && d.as_bytes()[d.len() - base.len() - 1] == b'.'
                    && d[d.len() - base.len()..].eq_ignore_ascii_case(base)
            }
            DomainMatch::All => true,
        }
    }

    /// How specific the entry is: higher wins when several match a domain.
    ///
    /// `All` < any `Subdomains` (longer suffix higher) < any `Exact`.
    pub(crate) fn specificity(&self) -> (u8, usize) {
        match self {
            DomainMatch::All => (0, 0),
            DomainMatch::Subdomains(base) => (1, base.len()),
            DomainMatch::Exact(x) => (2, x.len()),
        }
    }
}

impl fmt::Display for DomainMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainMatch::Exact(d) => f.write_str(d),
            DomainMatch::Subdomains(d) => write!(f, ".{d}"),
            DomainMatch::All => f.write_str("ALL"),
        }
    }
}

/// The most specific of `items` whose domain matches; the first on a tie.
fn most_specific<'a, T>(
    items: impl IntoIterator<Item = &'a T>,
    domain_of: impl Fn(&T) -> &DomainMatch,
    domain: &str,
) -> Option<&'a T> {
    let mut best: Option<(&'a T, (u8, usize))> = None;
    for it in items {
        let dm = domain_of(it);
        if !dm.matches(domain) {
            continue;
        }
        let s = dm.specificity();
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((it, s));
        }
    }
    best.map(|(it, _)| it)
}

/// One host of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteHost {
    /// IP address (IPv6 without brackets) or lower-case host name.
    pub host: String,
    /// TCP port (default 25).
    pub port: u16,
    /// Lower is tried first; equal priorities are tried round-robin.
    pub priority: u16,
}

/// One SMTP route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination domains the route covers.
    pub domain: DomainMatch,
    /// Hosts, at least one, sorted by priority (stable: file order within a priority).
    pub hosts: Vec<RouteHost>,
    /// Whether each host name in `hosts` stands for its MX hosts (see `relay::mx`).
    pub mx_lookup: bool,
}

/// SMTP routes (`policies/routes.yaml`), in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteTable {
    /// Routes in file order; `ALL`, when present, is last.
    pub routes: Vec<Route>,
}

impl RouteTable {
    /// The route for a recipient domain: exact beats `.suffix` (longest
    /// suffix wins) beats `ALL`; `None` when no route covers it.
    pub(crate) fn route_for(&self, domain: &str) -> Option<&Route> {
        most_specific(&self.routes, |r| &r.domain, domain)
    }
}

/// Built-in destination default: concurrent connections.
pub(crate) const DEFAULT_MAX_CONCURRENT_CONNECTIONS: u32 = 20;
/// Built-in destination default: messages per connection.
pub(crate) const DEFAULT_MAX_MESSAGES_PER_CONNECTION: u32 = 10;
/// Built-in destination default: recipients per message.
pub(crate) const DEFAULT_MAX_RECIPIENTS_PER_MESSAGE: u32 = 100;
/// Built-in destination default: outbound TLS mode.
pub(crate) const DEFAULT_OUTBOUND_TLS: OutboundTls = OutboundTls::Preferred;
/// Built-in default: interval between alert mails for one destination.
pub(crate) const DEFAULT_ALERT_INTERVAL: Duration = Duration::from_secs(3600);

/// Delivery limits and TLS for one destination domain (or the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationControl {
    /// Domains covered (`All` for the default entry).
    pub domain: DomainMatch,
    /// Simultaneous connections to the destination, at least 1.
    pub max_concurrent_connections: u32,
    /// Messages sent over one connection before it is closed, at least 1.
    pub max_messages_per_connection: u32,
    /// Recipients per message transaction; more are split, at least 1.
    pub max_recipients_per_message: u32,
    /// Outbound TLS mode.
    pub tls: OutboundTls,
    /// PEM bundle of trust roots for verification (resolved path);
    /// `None` = the webpki roots.
    pub ca_file: Option<PathBuf>,
}

impl DestinationControl {
    /// The built-in default entry (used when `destinations.yaml` sets nothing).
    pub fn builtin_default() -> Self {
        DestinationControl {
            domain: DomainMatch::All,
            max_concurrent_connections: DEFAULT_MAX_CONCURRENT_CONNECTIONS,
            max_messages_per_connection: DEFAULT_MAX_MESSAGES_PER_CONNECTION,
            max_recipients_per_message: DEFAULT_MAX_RECIPIENTS_PER_MESSAGE,
            tls: DEFAULT_OUTBOUND_TLS,
            ca_file: None,
        }
    }
}

/// Alert when a `required*` destination cannot negotiate or verify TLS (docs/relay.md, "Required-TLS alert").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsAlert {
    /// The global switch (Warning log line and counter; mail when `mail_to` is set).
    pub enabled: bool,
    /// At most one alert mail per destination per interval.
    pub interval: Duration,
    /// Administrator address for alert mails; `None` = no mail.
    pub mail_to: Option<String>,
}

impl Default for TlsAlert {
    fn default() -> Self {
        TlsAlert {
            enabled: true,
            interval: DEFAULT_ALERT_INTERVAL,
            mail_to: None,
        }
    }
}

/// Destination controls (`policies/destinations.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationControls {
    /// Applies to every domain no entry covers; entries inherit unset values from it.
    pub default: DestinationControl,
    /// Per-domain entries in file order (inheritance resolved).
    pub entries: Vec<DestinationControl>,
    /// Required-TLS failure alert.
    pub alert: TlsAlert,
    /// Name of the client certificate presented to destinations
    /// (`certs_dir/NAME.crt` with `certs_dir/NAME.key`); `None` = none.
    pub client_certificate: Option<String>,
}

impl Default for DestinationControls {
    fn default() -> Self {
        DestinationControls {
            default: DestinationControl::builtin_default(),
            entries: Vec::new(),
            alert: TlsAlert::default(),
            client_certificate: None,
        }
    }
}

impl DestinationControls {
    /// The controls for a destination domain: exact beats `.suffix` (longest
    /// suffix wins) beats the default.
    pub(crate) fn for_domain(&self, domain: &str) -> &DestinationControl {
        most_specific(&self.entries, |d| &d.domain, domain).unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(d: &str) -> DomainMatch {
        DomainMatch::Exact(d.into())
    }
    fn sub(d: &str) -> DomainMatch {
        DomainMatch::Subdomains(d.into())
    }
    fn route(domain: DomainMatch, host: &str) -> Route {
        Route {
            domain,
            hosts: vec![RouteHost {
                host: host.into(),
                port: 25,
                priority: 0,
            }],
            mx_lookup: false,
        }
    }

    #[test]
    fn tls_modes_parse_and_classify() {
        for m in OutboundTls::ALL {
            assert_eq!(m.as_str().parse::<OutboundTls>(), Ok(m));
        }
        let req: Vec<_> = OutboundTls::ALL
            .into_iter()
            .filter(|m| m.is_required())
            .map(OutboundTls::as_str)
            .collect();
        assert_eq!(
            req,
            ["required", "required-verify", "required-verify-hosted"]
        );
        let ver: Vec<_> = OutboundTls::ALL
            .into_iter()
            .filter(|m| m.verifies())
            .map(OutboundTls::as_str)
            .collect();
        assert_eq!(
            ver,
            [
                "preferred-verify",
                "required-verify",
                "required-verify-hosted"
            ]
        );
        assert!(!OutboundTls::No.uses_starttls());
        assert!(OutboundTls::Preferred.uses_starttls());
        assert_eq!(
            "Required".parse::<OutboundTls>(),
            Err(
                "unknown outbound TLS mode \"Required\": expected no, preferred, required, \
                 preferred-verify, required-verify or required-verify-hosted"
                    .to_string()
            )
        );
    }

    #[test]
    fn domain_forms_parse() {
        assert_eq!(DomainMatch::parse("Example.COM."), Ok(exact("example.com")));
        assert_eq!(DomainMatch::parse(".example.com"), Ok(sub("example.com")));
        assert_eq!(DomainMatch::parse("ALL"), Ok(DomainMatch::All));
        assert_eq!(DomainMatch::parse("all"), Ok(DomainMatch::All));
        assert_eq!(DomainMatch::parse("localhost"), Ok(exact("localhost")));
        for bad in [
            "",
            ".",
            "..example.com",
            "exa mple.com",
            "-x.com",
            "a..b",
            "*.x.com",
        ] {
            assert!(DomainMatch::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(exact("example.com").to_string(), "example.com");
        assert_eq!(sub("example.com").to_string(), ".example.com");
        assert_eq!(DomainMatch::All.to_string(), "ALL");
    }

    #[test]
    fn suffix_matches_subdomains_only() {
        let s = sub("example.com");
        assert!(s.matches("a.example.com"));
        assert!(s.matches("A.b.Example.com."));
        assert!(!s.matches("example.com"));
        assert!(!s.matches("badexample.com"));
        assert!(!s.matches(".example.com"));
        assert!(!s.matches("com"));
        assert!(exact("example.com").matches("EXAMPLE.com."));
        assert!(!exact("example.com").matches("a.example.com"));
        assert!(DomainMatch::All.matches("anything.test"));
    }

    #[test]
    fn route_precedence_exact_then_longest_suffix_then_all() {
        let t = RouteTable {
            routes: vec![
                route(sub("example.com"), "suffix"),
                route(sub("deep.example.com"), "deep"),
                route(exact("example.com"), "exact"),
                route(exact("x.deep.example.com"), "x"),
                route(DomainMatch::All, "all"),
            ],
        };
        let host = |d: &str| t.route_for(d).map(|r| r.hosts[0].host.as_str());
        assert_eq!(host("example.com"), Some("exact"));
        assert_eq!(host("a.example.com"), Some("suffix"));
        assert_eq!(host("a.deep.example.com"), Some("deep"));
        assert_eq!(host("deep.example.com"), Some("suffix"));
        assert_eq!(host("x.deep.example.com"), Some("x"));
        assert_eq!(host("badexample.com"), Some("all"));
        assert_eq!(host("other.test"), Some("all"));
        let no_default = RouteTable {
            routes: t.routes[..4].to_vec(),
        };
        assert_eq!(no_default.route_for("other.test"), None);
        assert_eq!(RouteTable::default().route_for("example.com"), None);
    }

    #[test]
    fn destination_precedence_falls_back_to_default() {
        let entry = |domain: DomainMatch, tls: OutboundTls| DestinationControl {
            domain,
            tls,
            ..DestinationControl::builtin_default()
        };
        let c = DestinationControls {
            entries: vec![
                entry(sub("partner.example"), OutboundTls::Required),
                entry(exact("partner.example"), OutboundTls::RequiredVerify),
                entry(sub("eu.partner.example"), OutboundTls::No),
            ],
            ..DestinationControls::default()
        };
        let tls = |d: &str| c.for_domain(d).tls;
        assert_eq!(tls("partner.example"), OutboundTls::RequiredVerify);
        assert_eq!(tls("mx.partner.example"), OutboundTls::Required);
        assert_eq!(tls("mx.eu.partner.example"), OutboundTls::No);
        assert_eq!(tls("otherpartner.example"), OutboundTls::Preferred);
        assert_eq!(c.for_domain("x.test").domain, DomainMatch::All);
    }

    #[test]
    fn builtin_defaults() {
        let d = DestinationControls::default();
        assert_eq!(d.default.max_concurrent_connections, 20);
        assert_eq!(d.default.max_messages_per_connection, 10);
        assert_eq!(d.default.max_recipients_per_message, 100);
        assert_eq!(d.default.tls, OutboundTls::Preferred);
        assert_eq!(d.default.ca_file, None);
        assert!(d.alert.enabled);
        assert_eq!(d.alert.interval, Duration::from_secs(3600));
    }
}
