//! `policies/validation.yaml` as loaded: cache, call-ahead and LDAP directory settings. The
//! file is optional; without it the defaults apply and no LDAP directory exists.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::breaker::BreakerSettings;
use super::cache::CacheSettings;
use super::callahead::CallaheadSettings;

/// One LDAP directory (`ldap: {NAME: ...}`), the password already read from its file.
#[derive(Clone, PartialEq, Eq)]
pub struct LdapDirectorySettings {
    /// `ldap://host:389` or `ldaps://host:636`.
    pub url: String,
    /// StartTLS on an `ldap://` URL.
    pub starttls: bool,
    /// CA bundle for the directory's certificate; `None`: the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Bind DN; empty for an anonymous search.
    pub bind_dn: String,
    /// The bind password (from `password_file`).
    pub password: String,
    /// Search base.
    pub base: String,
    /// Filter with `{address}`, `{local}`, `{domain}`.
    pub filter: String,
    /// Bound on one lookup.
    pub timeout: Duration,
    /// Connections kept at most.
    pub max_connections: usize,
    /// The directory's circuit breaker.
    pub breaker: BreakerSettings,
}

impl std::fmt::Debug for LdapDirectorySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out of debug output.
        f.debug_struct("LdapDirectorySettings")
            .field("url", &self.url)
            .field("starttls", &self.starttls)
            .field("bind_dn", &self.bind_dn)
            .field("base", &self.base)
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

/// Everything `policies/validation.yaml` sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationSettings {
    /// The verdict cache.
    pub cache: CacheSettings,
    /// How often the cache is written to the spool (and at shutdown).
    pub save_every: Duration,
    /// Call-ahead probes (the EHLO name is filled in at start from the delivery host name).
    pub callahead: CallaheadSettings,
    /// The breaker of each call-ahead destination.
    pub callahead_breaker: BreakerSettings,
    /// Detect catch-all domains before probing their addresses one by one.
    pub detect_catch_all: bool,
    /// LDAP directories by name.
    pub ldap: BTreeMap<String, LdapDirectorySettings>,
}

impl Default for ValidationSettings {
    fn default() -> Self {
        ValidationSettings {
            cache: CacheSettings::default(),
            save_every: Duration::from_secs(300),
            callahead: CallaheadSettings::default(),
            callahead_breaker: BreakerSettings::default(),
            detect_catch_all: true,
            ldap: BTreeMap::new(),
        }
    }
}
