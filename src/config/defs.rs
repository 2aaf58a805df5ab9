//! Raw YAML shapes (`*Def`), exactly as written by the administrator.
//!
//! Scalars that need checking are kept as `Spanned<String>` so that `load` can report
//! every bad value with its line and column, instead of stopping at the first one.
//! Numbers written without quotes arrive here as their text (`300`, `10M`).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

/// A scalar with the place it was written.
pub(crate) type SpannedStr = Spanned<String>;

/// A YAML mapping whose keys keep their location and whose order is kept.
#[derive(Debug, Clone)]
pub(crate) struct NamedMap<V>(pub Vec<(SpannedStr, V)>);

impl<V> Default for NamedMap<V> {
    fn default() -> Self {
        NamedMap(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for NamedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = NamedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of names to definitions")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(NamedMap::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<SpannedStr>()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(NamedMap(entries))
            }
        }
        d.deserialize_map(MapVisitor(PhantomData))
    }
}

/// Deserializes a present key (even `null`) as `Some`, so absent and `null` differ.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `mxgate.yaml`: global settings; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GlobalDef {
    /// Spool directory, relative to the config dir (default `spool`).
    #[serde(default)]
    pub spool_dir: Option<SpannedStr>,
    /// Certificates directory, relative to the config dir (default `certs`).
    #[serde(default)]
    pub certs_dir: Option<SpannedStr>,
    /// Mail log destination and format (default stdout, text).
    #[serde(default)]
    pub mail_log: Option<MailLogDef>,
    /// DNS resolvers and timeout.
    #[serde(default)]
    pub dns: Option<DnsDef>,
    /// How long SIGTERM waits for open sessions (default `30s`).
    #[serde(default)]
    pub shutdown_grace: Option<SpannedStr>,
    /// Prometheus endpoint.
    #[serde(default)]
    pub metrics: Option<MetricsDef>,
    /// Relay to the internal server: concurrency and retry schedule.
    #[serde(default)]
    pub delivery: Option<DeliveryDef>,
    /// How the mail-flow policies' per-IP limits count clients.
    #[serde(default)]
    pub per_ip: Option<PerIpDef>,
    /// Counters shared with other gateways in Redis/Valkey (default: none, all local).
    #[serde(default)]
    pub shared_state: Option<Spanned<super::shared_state::SharedStateDef>>,
}

/// `per_ip:` in `mxgate.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PerIpDef {
    /// IPv6 clients in one network of this prefix length count as one client (default 64).
    #[serde(default)]
    pub ipv6_prefix: Option<SpannedStr>,
}

/// `delivery:` in `mxgate.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeliveryDef {
    /// Simultaneous delivery connections in total (default 20).
    #[serde(default)]
    pub concurrency: Option<SpannedStr>,
    /// First retry delay after a temporary failure (default `1m`); it doubles each time.
    #[serde(default)]
    pub retry_initial: Option<SpannedStr>,
    /// Longest delay between retries (default `1h`).
    #[serde(default)]
    pub retry_max: Option<SpannedStr>,
    /// How long a message may stay queued before it bounces (default `5d`).
    #[serde(default)]
    pub max_queue_lifetime: Option<SpannedStr>,
    /// Host name used in EHLO and DSNs (default: the first listener's host name).
    #[serde(default)]
    pub hostname: Option<SpannedStr>,
}

/// `mail_log:` in `mxgate.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MailLogDef {
    /// `stdout` or a file path relative to the config dir (default `stdout`).
    #[serde(default)]
    pub target: Option<SpannedStr>,
    /// `text` or `json` (default `text`).
    #[serde(default)]
    pub format: Option<SpannedStr>,
}

/// `dns:` in `mxgate.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DnsDef {
    /// Resolvers as `IP` or `IP:port` (port 53 by default); empty = the system's.
    #[serde(default)]
    pub resolvers: Option<Vec<SpannedStr>>,
    /// Timeout for one connection's lookups together (default `5s`).
    #[serde(default)]
    pub timeout: Option<SpannedStr>,
    /// A hosts file (e.g. `/etc/hosts`) answering reverse DNS before the servers; default none.
    #[serde(default)]
    pub hosts_file: Option<SpannedStr>,
    /// How often the running server re-reads the TLSA and `_mta-sts` records behind the
    /// DANE and MTA-STS gauges (default `1h`, `0` = never).
    #[serde(default)]
    pub self_check_interval: Option<SpannedStr>,
}

/// `metrics:` in `mxgate.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsDef {
    /// `IP:port` of the Prometheus endpoint; `null` disables it (default `127.0.0.1:9187`).
    #[serde(default, deserialize_with = "present")]
    pub listen: Option<Spanned<Option<String>>>,
    /// `/ready` answers 503 while the spool's filesystem has less free space (default 256M).
    pub ready_min_free_space: Option<SpannedStr>,
    /// `sender_org` label: organisation name -> PTR suffixes, added to the shipped table
    /// (an entry for a shipped suffix replaces it).
    #[serde(default)]
    pub sender_orgs: Option<SenderOrgsDef>,
}

/// `metrics.sender_orgs`: organisation name -> its PTR suffixes (`null` is reported).
pub(crate) type SenderOrgsDef = Spanned<NamedMap<Option<Spanned<Vec<SpannedStr>>>>>;

/// `listeners/*.yaml`: one listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerDef {
    /// Listener name, unique across listeners (required).
    #[serde(default)]
    pub name: Option<SpannedStr>,
    /// `public` or `private` (required).
    #[serde(default, rename = "type")]
    pub kind: Option<SpannedStr>,
    /// Addresses to bind, `IP:port` (required, at least one).
    #[serde(default)]
    pub bind: Option<Spanned<Vec<SpannedStr>>>,
    /// Host name for the banner and EHLO reply (required).
    #[serde(default)]
    pub hostname: Option<SpannedStr>,
    /// Certificate: `demo`, a name in `certs_dir` (`NAME.crt`) or a path (optional).
    #[serde(default)]
    pub certificate: Option<SpannedStr>,
    /// Private key: a name in `certs_dir` (`NAME.key`) or a path (default: from `certificate`).
    #[serde(default)]
    pub key: Option<SpannedStr>,
    /// PEM trust anchors for client certificates, relative to the config dir; `null` = webpki roots.
    #[serde(default, deserialize_with = "present")]
    pub client_ca_file: Option<Spanned<Option<String>>>,
    /// Name of the HAT in `policies/hat.yaml` (required).
    #[serde(default)]
    pub hat: Option<SpannedStr>,
    /// Name of the RAT in `policies/rat.yaml` (required for public listeners).
    #[serde(default)]
    pub rat: Option<SpannedStr>,
    /// Maximum concurrent connections (default 1000).
    #[serde(default)]
    pub max_connections: Option<SpannedStr>,
    /// SMTP timeouts.
    #[serde(default)]
    pub timeouts: Option<TimeoutsDef>,
    /// Longest command line in octets, CRLF included (default and minimum 512).
    #[serde(default)]
    pub max_command_line: Option<SpannedStr>,
    /// Bad commands tolerated before closing with 421 (default 10).
    #[serde(default)]
    pub max_bad_commands: Option<SpannedStr>,
    /// PROXY protocol from trusted load balancers (default off).
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocolDef>,
}

/// `timeouts:` of a listener; durations like `300s`, `5m`, `1h`, `250ms` or seconds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimeoutsDef {
    /// Waiting for the next command (default `5m`).
    #[serde(default)]
    pub command: Option<SpannedStr>,
    /// Waiting for the next DATA chunk (default `3m`).
    #[serde(default)]
    pub data: Option<SpannedStr>,
    /// TLS handshake after STARTTLS (default `30s`).
    #[serde(default)]
    pub tls_handshake: Option<SpannedStr>,
    /// Whole session (default `30m`).
    #[serde(default)]
    pub session: Option<SpannedStr>,
}

/// `proxy_protocol:` of a listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProxyProtocolDef {
    /// Networks (CIDR or address) whose PROXY header is trusted (required, at least one).
    #[serde(default)]
    pub trusted: Option<Spanned<Vec<SpannedStr>>>,
    /// How long to wait for the header (default `5s`).
    #[serde(default)]
    pub timeout: Option<SpannedStr>,
}

/// `policies/mail_flow.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MailFlowDef {
    /// Values every policy inherits when it does not set them.
    #[serde(default)]
    pub default: Option<Spanned<PolicyDef>>,
    /// Named policies (`ACCEPTED`, `$TRUSTED`, ...).
    #[serde(default)]
    pub policies: Option<NamedMap<Spanned<PolicyDef>>>,
}

/// One mail-flow policy (or the `default` section); every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyDef {
    /// `accept`, `reject`, `tcprefuse`, `relay` or `continue` (default `accept`, not inherited).
    #[serde(default)]
    pub action: Option<SpannedStr>,
    /// Maximum message size: bytes, `10M`-style size or `unlimited`, or a limit map.
    #[serde(default)]
    pub max_message_size: Option<Spanned<LimitDef>>,
    /// Maximum messages per connection: a number, `unlimited` or a limit map.
    #[serde(default)]
    pub max_messages_per_connection: Option<Spanned<LimitDef>>,
    /// Maximum recipients per message: a number, `unlimited` or a limit map.
    #[serde(default)]
    pub max_recipients_per_message: Option<Spanned<LimitDef>>,
    /// Maximum concurrent connections per client IP: a number, `unlimited` or a limit map.
    #[serde(default)]
    pub max_concurrent_connections_per_ip: Option<Spanned<LimitDef>>,
    /// Maximum recipients per hour per client IP: a number, `unlimited` or a limit map.
    #[serde(default)]
    pub max_recipients_per_hour: Option<Spanned<LimitDef>>,
    /// Maximum invalid recipients per hour per client IP (DHAP): a number, `unlimited` or a
    /// limit map.
    #[serde(default)]
    pub max_invalid_recipients_per_hour: Option<Spanned<LimitDef>>,
    /// Greeting banner (code 2xx).
    #[serde(default)]
    pub banner: Option<ReplyDef>,
    /// Banner sent before closing under `action: reject` (code 4xx/5xx).
    #[serde(default)]
    pub reject_banner: Option<ReplyDef>,
    /// Host name for greeting and EHLO instead of the listener's.
    #[serde(default)]
    pub override_hostname: Option<SpannedStr>,
    /// Inbound TLS: `off`, `preferred` or `required`.
    #[serde(default)]
    pub tls: Option<SpannedStr>,
    /// Ask for and verify a client certificate: `true` or `false`.
    #[serde(default)]
    pub tls_verify_client: Option<SpannedStr>,
    /// Senders (`user@domain`, `@domain`, `domain`) that must use TLS even under `preferred`.
    #[serde(default)]
    pub tls_mandatory_senders: Option<Vec<SpannedStr>>,
    /// Wait before the greeting, refusing clients that talk first (`300ms`, `0`; at most 30s).
    #[serde(default)]
    pub pre_greet_pause: Option<SpannedStr>,
    /// Envelope-sender DNS verification: `on`, `off`, or a map (docs/sender-auth.md).
    #[serde(default)]
    pub sender_dns_verification: Option<Spanned<crate::config::sender_auth::SenderDnsDef>>,
    /// SPF: `off`, `tag` or `reject_fail`.
    #[serde(default)]
    pub spf: Option<SpannedStr>,
    /// Refuse a `softfail` like a `fail` under `spf: reject_fail`: `true` or `false`.
    #[serde(default)]
    pub spf_reject_softfail: Option<SpannedStr>,
    /// The stage that refuses an SPF failure: `mail`, `rcpt` or `data`.
    #[serde(default)]
    pub spf_at: Option<SpannedStr>,
    /// DKIM and DMARC after DATA: `off`, `tag` or `enforce`.
    #[serde(default)]
    pub dmarc: Option<SpannedStr>,
}

/// A limit: a plain value (`10M`, `50`, `unlimited`) or a map that also sets the reply.
#[derive(Debug)]
pub(crate) enum LimitDef {
    /// The short form: just the maximum.
    Value(String),
    /// The long form with the reply used when the limit is exceeded.
    Full(Box<LimitFullDef>),
}

impl<'de> Deserialize<'de> for LimitDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LimitVisitor;
        impl<'de> Visitor<'de> for LimitVisitor {
            type Value = LimitDef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, a size such as 10M, `unlimited`, or a map {max, code, enhanced, text}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LimitDef, E> {
                Ok(LimitDef::Value(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LimitDef, E> {
                Ok(LimitDef::Value(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LimitDef, E> {
                Ok(LimitDef::Value(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<LimitDef, E> {
                Ok(LimitDef::Value(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<LimitDef, E> {
                Ok(LimitDef::Value(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LimitDef, A::Error> {
                LimitFullDef::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|f| LimitDef::Full(Box::new(f)))
            }
        }
        d.deserialize_any(LimitVisitor)
    }
}

/// The long form of a limit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitFullDef {
    /// The maximum (`unlimited` allowed); inherited when absent.
    #[serde(default)]
    pub max: Option<SpannedStr>,
    /// Reply code when exceeded (4xx or 5xx).
    #[serde(default)]
    pub code: Option<SpannedStr>,
    /// Enhanced status code, class matching `code` (e.g. `4.5.3`).
    #[serde(default)]
    pub enhanced: Option<SpannedStr>,
    /// Reply text.
    #[serde(default)]
    pub text: Option<SpannedStr>,
}

/// A reply or banner: code, enhanced code and text; unset parts are inherited.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplyDef {
    /// Three-digit reply code.
    #[serde(default)]
    pub code: Option<SpannedStr>,
    /// Enhanced status code such as `5.7.1`.
    #[serde(default)]
    pub enhanced: Option<SpannedStr>,
    /// Text; banners may use `$Hostname`, `$RemoteIP`, `$Group`.
    #[serde(default)]
    pub text: Option<SpannedStr>,
}

/// One HAT in `policies/hat.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HatDef {
    /// Sender groups in order; the first whose criteria match wins.
    #[serde(default)]
    pub sender_groups: Option<Vec<Spanned<SenderGroupDef>>>,
    /// Policy of the implicit last group `ALL` (default `ACCEPTED`).
    #[serde(default)]
    pub default_policy: Option<SpannedStr>,
}

/// One sender group.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SenderGroupDef {
    /// Group name, unique within the HAT (required).
    #[serde(default)]
    pub name: Option<SpannedStr>,
    /// Mail-flow policy name; a leading `$` is allowed (required).
    #[serde(default)]
    pub policy: Option<SpannedStr>,
    /// Criteria (IP, CIDR, range, host, `.suffix`, `ptr_*`, `dnslist:ZONE`, `all`); empty never matches.
    #[serde(default, rename = "match")]
    pub criteria: Option<Vec<SpannedStr>>,
    /// Free text for the administrator (not used by mxgate; allowed so it need not be a YAML comment).
    #[serde(default)]
    #[allow(dead_code)] // read by nobody when built into the binary only
    pub comment: Option<String>,
}

/// One RAT in `policies/rat.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RatDef {
    /// Entries in order; the first match wins, and the implicit last entry rejects.
    #[serde(default)]
    pub entries: Option<Vec<Spanned<RatEntryDef>>>,
    /// Where `RCPT TO:<postmaster>` goes (default: postmaster@ the first accepted domain).
    #[serde(default)]
    pub postmaster: Option<SpannedStr>,
}

/// One RAT entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RatEntryDef {
    /// `example.com`, `.example.com`, `user@example.com`, `user@` or `ALL` (required).
    #[serde(default)]
    pub recipient: Option<SpannedStr>,
    /// `accept` or `reject` (default `accept`).
    #[serde(default)]
    pub action: Option<SpannedStr>,
    /// Custom reply: 2xx for accept, 4xx/5xx for reject.
    #[serde(default)]
    pub reply: Option<ReplyDef>,
    /// Recipient validation: `none`, `callahead`, `{list: FILE}`, `{ldap: NAME}`.
    #[serde(default)]
    pub validate: Option<Spanned<super::validation::ValidateDef>>,
    /// `tempfail` (default) or `accept` when validation gives no answer.
    #[serde(default)]
    pub on_tempfail: Option<SpannedStr>,
    /// Reply to an invalid recipient (5xx).
    #[serde(default)]
    pub invalid_reply: Option<Spanned<ReplyDef>>,
    /// Reply when validation gives no answer (4xx).
    #[serde(default)]
    pub tempfail_reply: Option<Spanned<ReplyDef>>,
}

/// `policies/routes.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoutesDef {
    /// Routes; `ALL` (the default route) must be the last.
    #[serde(default)]
    pub routes: Option<Vec<Spanned<RouteDef>>>,
}

/// One SMTP route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteDef {
    /// `example.com`, `.example.com` (every subdomain) or `ALL` (required).
    #[serde(default)]
    pub domain: Option<SpannedStr>,
    /// Hosts to deliver to (required, at least one).
    #[serde(default)]
    pub hosts: Option<Spanned<Vec<Spanned<RouteHostDef>>>>,
    /// `true` lets delivery fall back to MX lookups (default `false`).
    #[serde(default)]
    pub mx_lookup: Option<SpannedStr>,
}

/// One host of a route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteHostDef {
    /// IP address or host name (required).
    #[serde(default)]
    pub host: Option<SpannedStr>,
    /// TCP port, 1-65535 (default 25).
    #[serde(default)]
    pub port: Option<SpannedStr>,
    /// 0-65535, lower first; equal priorities round-robin (default 0).
    #[serde(default)]
    pub priority: Option<SpannedStr>,
}

/// `policies/destinations.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DestinationsDef {
    /// Values for every domain no entry covers, and inherited by the entries.
    #[serde(default)]
    pub default: Option<Spanned<DestinationDef>>,
    /// Per-domain entries.
    #[serde(default)]
    pub destinations: Option<Vec<Spanned<DestinationDef>>>,
    /// Alert when a `required*` destination cannot negotiate or verify TLS.
    #[serde(default)]
    pub alert_on_required_tls_failure: Option<TlsAlertDef>,
    /// Certificate name in `certs_dir` presented to destinations; `null` = none.
    #[serde(default, deserialize_with = "present")]
    pub client_certificate: Option<Spanned<Option<String>>>,
}

/// One destination entry (or the `default` section); every key but `domain` is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DestinationDef {
    /// `example.com` or `.example.com` (required in entries, not allowed in `default`).
    #[serde(default)]
    pub domain: Option<SpannedStr>,
    /// Simultaneous connections, at least 1.
    #[serde(default)]
    pub max_concurrent_connections: Option<SpannedStr>,
    /// Messages per connection, at least 1.
    #[serde(default)]
    pub max_messages_per_connection: Option<SpannedStr>,
    /// Recipients per message, at least 1.
    #[serde(default)]
    pub max_recipients_per_message: Option<SpannedStr>,
    /// `no`, `preferred`, `required`, `preferred-verify`, `required-verify`, `required-verify-hosted`.
    #[serde(default)]
    pub tls: Option<SpannedStr>,
    /// PEM trust roots, relative to the config dir; `null` = webpki roots.
    #[serde(default, deserialize_with = "present")]
    pub ca_file: Option<Spanned<Option<String>>>,
}

/// `alert_on_required_tls_failure:` in `policies/destinations.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsAlertDef {
    /// `true` or `false` (default `true`).
    #[serde(default)]
    pub enabled: Option<SpannedStr>,
    /// At most one alert mail per destination per interval (default `1h`).
    #[serde(default)]
    pub interval: Option<SpannedStr>,
    /// Administrator address for alert mails; `null` = no mail.
    #[serde(default, deserialize_with = "present")]
    pub mail_to: Option<Spanned<Option<String>>>,
}
