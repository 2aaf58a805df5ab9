//! The validator of one configuration: answers a [`ValidationRequest`] with the method its
//! RAT entry names — `list:` in memory, `callahead` through the probe pool of the
//! recipient domain's SMTP route, `ldap:` through the named directory — in front of the
//! shared verdict cache. A reload builds a new validator around the same cache.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::breaker::Transition;
use super::cache::{CacheKey, VerdictCache};
use super::callahead::{CallaheadSettings, ProbePool, ProbeTls};
use super::destination::{Checked, Destination, Method, Source, ValidationClock};
use super::ldap::{LdapDirectory, LdapSettings};
use super::rule::{ValidationMethod, ValidationRequest};
use super::settings::ValidationSettings;
use super::shared::SharedVerdicts;
use super::verdict::{Answer, TempFailCause};
use crate::config::outbound::{DestinationControls, Route, RouteTable};
use crate::relay::outbound_tls::OutboundTlsContext;

/// What a lookup needs from the configuration.
#[derive(Debug, Clone)]
pub struct ValidatorConfig {
    /// `policies/validation.yaml`.
    pub settings: Arc<ValidationSettings>,
    /// The SMTP routes (a call-ahead asks the route's internal server).
    pub routes: Arc<RouteTable>,
    /// The name probes send in EHLO (the delivery host name).
    pub helo_name: String,
    /// Per-domain outbound controls: a probe uses the TLS mode delivery would.
    pub destinations: Arc<DestinationControls>,
    /// Outbound TLS (roots, client certificate), as delivery has it.
    pub tls: Arc<OutboundTlsContext>,
}

/// The validator of one configuration.
pub struct Validator {
    config: ValidatorConfig,
    cache: Arc<VerdictCache>,
    clock: Arc<dyn ValidationClock>,
    ldap: HashMap<String, Arc<Destination>>,
    callahead: Mutex<HashMap<String, Arc<Destination>>>,
    /// The verdicts other gateways learned (`shared_state:`), asked after a local miss.
    shared: Option<SharedVerdicts>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("ldap", &self.ldap.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// How much longer than `callahead.timeout` a whole call-ahead may take (see its use).
const WHOLE_LOOKUP_MARGIN: std::time::Duration = std::time::Duration::from_millis(200);

/// The method id (first part of a cache key) of a call-ahead to `route`.
pub fn route_id(route: &Route) -> String {
    format!("callahead:{}", route.domain)
}

/// The first host of a route, resolved (IP literals as they are; names through the system
/// resolver, so `/etc/hosts` works for the internal server as it does for delivery).
async fn first_host(route: &Route) -> Result<(String, SocketAddr), String> {
    let host = route.hosts.first().ok_or("route has no host")?;
    if let Ok(ip) = host.host.parse::<std::net::IpAddr>() {
        return Ok((host.host.clone(), SocketAddr::new(ip, host.port)));
    }
    let addr = tokio::net::lookup_host((host.host.as_str(), host.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", host.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", host.host))?;
    Ok((host.host.clone(), addr))
}

/// A tempfail answered without asking anyone.
fn unanswered(cause: TempFailCause, detail: String) -> Checked {
    Checked {
        answer: Answer::temp(cause, detail),
        source: Source::Lookup,
        refresh_due: false,
        transition: None,
    }
}

impl Validator {
    /// A validator for `config` around the shared `cache`.
    pub fn new(
        config: ValidatorConfig,
        cache: Arc<VerdictCache>,
        clock: Arc<dyn ValidationClock>,
    ) -> Self {
        let ldap = config
            .settings
            .ldap
            .iter()
            .map(|(name, s)| {
                let settings = LdapSettings {
                    name: name.clone(),
                    url: s.url.clone(),
                    starttls: s.starttls,
                    tls: s.ca_file.as_deref().and_then(ldap_tls),
                    bind_dn: s.bind_dn.clone(),
                    password: s.password.clone(),
                    base: s.base.clone(),
                    filter: s.filter.clone(),
                    timeout: s.timeout,
                    max_connections: s.max_connections,
                };
                let d = Destination::new(
                    format!("ldap:{name}"),
                    Method::Ldap(LdapDirectory::new(settings)),
                    s.breaker,
                );
                (name.clone(), Arc::new(d))
            })
            .collect();
        Validator {
            config,
            cache,
            clock,
            ldap,
            callahead: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// This validator asking `shared` after a local cache miss and publishing what it
    /// learns there.
    pub fn with_shared(mut self, shared: Option<SharedVerdicts>) -> Self {
        self.shared = shared;
        self
    }

    /// The shared verdicts, when `shared_state:` is configured.
    pub fn shared(&self) -> Option<&SharedVerdicts> {
        self.shared.as_ref()
    }

    /// The shared verdict cache.
    pub fn cache(&self) -> &Arc<VerdictCache> {
        &self.cache
    }

    /// Answers `req`; a valid cache entry due for refresh is refreshed in the background.
    pub async fn validate(&self, req: &ValidationRequest) -> Checked {
        self.lookup(req, true).await
    }

    /// Answers `req` without the cache (`mxgate recipients check --no-cache`); the answer is
    /// still stored.
    pub async fn validate_uncached(&self, req: &ValidationRequest) -> Checked {
        self.lookup(req, false).await
    }

    async fn lookup(&self, req: &ValidationRequest, use_cache: bool) -> Checked {
        let dest = match &req.rule.method {
            ValidationMethod::List(list) => {
                return Checked {
                    answer: Answer::new(
                        list.lookup(&req.address),
                        format!("list {}", list.path().display()),
                    ),
                    source: Source::Lookup,
                    refresh_due: false,
                    transition: None,
                }
            }
            ValidationMethod::Ldap(name) => match self.ldap.get(name) {
                Some(d) => d.clone(),
                None => {
                    return unanswered(
                        TempFailCause::Protocol,
                        format!("ldap:{name}: no such directory"),
                    )
                }
            },
            ValidationMethod::Callahead => match self.callahead_destination(&req.address).await {
                Ok(d) => d,
                Err(detail) => return unanswered(TempFailCause::Refused, detail),
            },
        };
        let key = self.cache.key(dest.id(), &req.address);
        // Another gateway's answer before the directory: filled into the local cache, where
        // the destination finds it as a hit.
        let mut from_shared = false;
        if let (true, Some(shared)) = (use_cache, &self.shared) {
            let now = self.clock.unix();
            if self.cache.entry(&key, now).is_none() && !self.known_catch_all(&dest, req, now) {
                from_shared = shared.fill(&self.cache, &key, now).await;
            }
        }
        let lookup = async {
            if use_cache {
                dest.validate(&self.cache, self.clock.as_ref(), &req.address)
                    .await
            } else {
                dest.refresh(&self.cache, self.clock.as_ref(), &req.address)
                    .await
            }
        };
        // One `timeout` bounds a whole call-ahead, catch-all detection included (an LDAP
        // directory bounds its lookups itself).
        let checked = match &req.rule.method {
            ValidationMethod::Callahead => {
                // A little past the probe's own deadline, so a single probe ends by its own
                // (a busy pool is told apart from a silent server there); this bound only cuts
                // catch-all detection plus probe, and counts as the server's failure.
                let limit = self.config.settings.callahead.timeout;
                match tokio::time::timeout(limit + WHOLE_LOOKUP_MARGIN, lookup).await {
                    Ok(c) => c,
                    Err(_) => Checked {
                        transition: dest.record_failure(self.clock.as_ref()),
                        ..unanswered(
                            TempFailCause::Timeout,
                            format!("{}: no answer within {limit:?}", dest.id()),
                        )
                    },
                }
            }
            _ => lookup.await,
        };
        if let Some(t) = checked.transition {
            crate::metrics::validation::breaker(dest.id(), t);
        }
        match checked.source {
            Source::Cache { .. } => {
                crate::metrics::validation::cache_hit(if from_shared { "shared" } else { "local" })
            }
            Source::Lookup => {
                // A lookup may have added an entry (hits change nothing): keep the gauge
                // current.
                let (valid, invalid) = self.cache.counts();
                crate::metrics::validation::set_cache_entries(valid, invalid);
                self.publish(&key);
            }
            Source::Breaker => {}
        }
        if checked.refresh_due {
            let (dest, cache, clock) = (dest.clone(), self.cache.clone(), self.clock.clone());
            let address = req.address.clone();
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let c = dest.refresh(&cache, clock.as_ref(), &address).await;
                if let Some(shared) = shared {
                    let now = clock.unix();
                    if let Some(entry) = cache.entry(&key, now) {
                        shared.publish(&key, entry, now).await;
                    }
                }
                if let Some(t) = c.transition {
                    crate::metrics::validation::breaker(dest.id(), t);
                    tracing::warn!(
                        "recipient validation {}: breaker {} during a background refresh",
                        dest.id(),
                        transition_text(t)
                    );
                }
            });
        }
        checked
    }

    /// True when `req`'s domain is cached locally as a catch-all of `dest`: the destination
    /// answers from that finding, so the store is not asked for the address.
    fn known_catch_all(&self, dest: &Destination, req: &ValidationRequest, now: u64) -> bool {
        let Some((_, domain)) = req.address.rsplit_once('@') else {
            return false;
        };
        let marker = self.cache.key(dest.id(), &format!("@{domain}"));
        self.cache.entry(&marker, now).is_some_and(|e| e.valid)
    }

    /// Sends the local entry of `key` (just learned) to the shared store, in the
    /// background: no reply waits for it. A tempfail left no entry, so nothing goes.
    fn publish(&self, key: &CacheKey) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let now = self.clock.unix();
        if let Some(entry) = self.cache.entry(key, now) {
            let key = key.clone();
            tokio::spawn(async move { shared.publish(&key, entry, now).await });
        }
    }

    /// The call-ahead destination of the recipient domain's route, created on first use.
    async fn callahead_destination(&self, address: &str) -> Result<Arc<Destination>, String> {
        let domain = address
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        let route = self
            .config
            .routes
            .route_for(&domain)
            .ok_or_else(|| format!("callahead: no SMTP route covers {domain}"))?;
        let id = route_id(route);
        if let Some(d) = lock(&self.callahead).get(&id) {
            return Ok(d.clone());
        }
        let (host, addr) = first_host(route).await.map_err(|e| format!("{id}: {e}"))?;
        let settings = CallaheadSettings {
            helo_name: self.config.helo_name.clone(),
            ..self.config.settings.callahead.clone()
        };
        // The TLS mode of the domain's destination control, as delivery uses it (a route
        // covering several domains takes the first recipient domain's).
        let tls = ProbeTls::for_route_host(
            &self.config.destinations,
            self.config.tls.clone(),
            &domain,
            &host,
            addr,
        );
        let mut d = Destination::new(
            id.clone(),
            Method::Callahead(ProbePool::with_tls(settings, tls)),
            self.config.settings.callahead_breaker,
        );
        if self.config.settings.detect_catch_all {
            d = d.with_catch_all_detection();
        }
        let d = Arc::new(d);
        // Two first lookups may race: the first one stored wins, the other pool is dropped.
        Ok(lock(&self.callahead).entry(id).or_insert(d).clone())
    }

    /// Open breakers by destination id (the gauge and `recipients check`).
    pub fn breakers(&self) -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> = self
            .ldap
            .values()
            .chain(lock(&self.callahead).values())
            .map(|d| (d.id().to_string(), d.is_breaker_open()))
            .collect();
        v.sort();
        v
    }
}

/// Text for a breaker transition (log lines).
pub fn transition_text(t: Transition) -> &'static str {
    match t {
        Transition::Opened { .. } => "opened",
        Transition::Reopened => "reopened",
        Transition::Closed => "closed",
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A rustls client configuration trusting the CA bundle at `path`; `None` (ldap3's
/// defaults) when it cannot be read — `mxgate check` already refused an unreadable one.
fn ldap_tls(path: &std::path::Path) -> Option<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(path).ok()?.flatten() {
        roots.add(c).ok()?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Some(Arc::new(config))
}
