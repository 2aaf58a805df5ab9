//! `policies/validation.yaml` (optional: cache, call-ahead and LDAP directory settings) and
//! the validation keys of a RAT entry (`validate`, `on_tempfail`, `invalid_reply`,
//! `tempfail_reply`).

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::defs::{NamedMap, RatEntryDef, ReplyDef, SpannedStr};
use super::error::{join, ConfigError, FileErrors, Pos};
use super::load::{duration, read_yaml, Read};
use super::outbound::RouteTable;
use super::policies::{merge_reply, Class, Parts};
use super::routes::ranged;
use super::values::{check_sender, parse_bool};
use crate::policy::rat::RecipientPattern;
use crate::smtp::reply::Reply;
use crate::validate::breaker::BreakerSettings;
use crate::validate::list::RecipientList;
use crate::validate::rule::{OnTempFail, RecipientValidation, ValidationMethod};
use crate::validate::settings::{LdapDirectorySettings, ValidationSettings};

/// `policies/validation.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ValidationFileDef {
    /// The verdict cache.
    #[serde(default)]
    pub cache: Option<CacheDef>,
    /// Call-ahead probes.
    #[serde(default)]
    pub callahead: Option<CallaheadDef>,
    /// LDAP directories by name.
    #[serde(default)]
    pub ldap: Option<NamedMap<Option<LdapDef>>>,
}

/// `cache:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CacheDef {
    /// Entries kept at most.
    #[serde(default)]
    pub max_entries: Option<SpannedStr>,
    /// Lifetime of a valid answer.
    #[serde(default)]
    pub valid_ttl: Option<SpannedStr>,
    /// Age after which a valid answer is refreshed in the background.
    #[serde(default)]
    pub valid_refresh: Option<SpannedStr>,
    /// Lifetime of an invalid answer.
    #[serde(default)]
    pub invalid_ttl: Option<SpannedStr>,
    /// How often the cache is saved.
    #[serde(default)]
    pub save_every: Option<SpannedStr>,
}

/// `breaker:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BreakerDef {
    /// Consecutive failures that open it.
    #[serde(default)]
    pub failures: Option<SpannedStr>,
    /// How long it stays open.
    #[serde(default)]
    pub cooldown: Option<SpannedStr>,
}

/// `callahead:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CallaheadDef {
    /// Probe sender, `<>` for the null sender.
    #[serde(default)]
    pub mail_from: Option<SpannedStr>,
    /// Bound on one lookup.
    #[serde(default)]
    pub timeout: Option<SpannedStr>,
    /// Probes at once per destination.
    #[serde(default)]
    pub max_concurrency: Option<SpannedStr>,
    /// Lookups that may wait for a slot.
    #[serde(default)]
    pub max_waiting: Option<SpannedStr>,
    /// Probes per connection.
    #[serde(default)]
    pub max_probes_per_connection: Option<SpannedStr>,
    /// Idle connections older than this are not reused.
    #[serde(default)]
    pub idle_timeout: Option<SpannedStr>,
    /// Detect catch-all domains.
    #[serde(default)]
    pub detect_catch_all: Option<SpannedStr>,
    /// The breaker of each destination.
    #[serde(default)]
    pub breaker: Option<BreakerDef>,
}

/// One LDAP directory.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LdapDef {
    /// `ldap://host:389` or `ldaps://host:636` (required).
    #[serde(default)]
    pub url: Option<SpannedStr>,
    /// StartTLS on `ldap://`.
    #[serde(default)]
    pub starttls: Option<SpannedStr>,
    /// CA bundle for the directory's certificate.
    #[serde(default)]
    pub ca_file: Option<Spanned<Option<String>>>,
    /// Bind DN (empty: anonymous).
    #[serde(default)]
    pub bind_dn: Option<SpannedStr>,
    /// File holding the bind password.
    #[serde(default)]
    pub password_file: Option<SpannedStr>,
    /// Search base (required).
    #[serde(default)]
    pub base: Option<SpannedStr>,
    /// Filter with `{address}`, `{local}`, `{domain}` (required).
    #[serde(default)]
    pub filter: Option<SpannedStr>,
    /// Bound on one lookup.
    #[serde(default)]
    pub timeout: Option<SpannedStr>,
    /// Connections kept at most.
    #[serde(default)]
    pub max_connections: Option<SpannedStr>,
    /// The directory's breaker.
    #[serde(default)]
    pub breaker: Option<BreakerDef>,
}

/// `validate:` of a RAT entry: `none`, `callahead`, `{list: FILE}` or `{ldap: NAME}`.
#[derive(Debug)]
pub(crate) enum ValidateDef {
    /// A word.
    Word(String),
    /// A map with one key.
    Map(ValidateMapDef),
}

/// The map form of `validate:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ValidateMapDef {
    /// `list: FILE`.
    #[serde(default)]
    pub list: Option<SpannedStr>,
    /// `ldap: NAME`.
    #[serde(default)]
    pub ldap: Option<SpannedStr>,
}

impl<'de> Deserialize<'de> for ValidateDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ValidateDef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("none, callahead, {list: FILE} or {ldap: NAME}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ValidateDef, E> {
                Ok(ValidateDef::Word(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ValidateDef, E> {
                Ok(ValidateDef::Word(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<ValidateDef, E> {
                Ok(ValidateDef::Word("none".into()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ValidateDef, A::Error> {
                ValidateMapDef::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(ValidateDef::Map)
            }
        }
        d.deserialize_any(V)
    }
}

/// What the RAT entries need to know of `policies/validation.yaml` and the routes.
pub(crate) struct ValidationContext<'a> {
    /// The config directory (list files are relative to it).
    pub dir: &'a Path,
    /// LDAP directory names; `None` when the file could not be read (names not checked).
    pub ldap_names: Option<Vec<String>>,
    /// The SMTP routes (a call-ahead needs one).
    pub routes: &'a RouteTable,
}

/// A duration longer than 0.
fn dur(v: &Option<SpannedStr>, default: Duration, path: &str, e: &mut FileErrors<'_>) -> Duration {
    duration(v, default, false, path, e)
}

fn num(v: &Option<SpannedStr>, default: u64, max: u64, path: &str, e: &mut FileErrors<'_>) -> u64 {
    v.as_ref()
        .and_then(|s| ranged(s, 1, max, e, path))
        .unwrap_or(default)
}

fn breaker(d: Option<&BreakerDef>, path: &str, e: &mut FileErrors<'_>) -> BreakerSettings {
    let base = BreakerSettings::default();
    let Some(d) = d else { return base };
    BreakerSettings {
        failures: num(
            &d.failures,
            base.failures.into(),
            1000,
            &join(path, "failures"),
            e,
        ) as u32,
        cooldown: dur(&d.cooldown, base.cooldown, &join(path, "cooldown"), e),
    }
}

/// Reads `policies/validation.yaml` (optional); the LDAP names are `None` when it failed.
pub(crate) fn load_validation(
    dir: &Path,
    sink: &mut Vec<ConfigError>,
) -> (ValidationSettings, Option<Vec<String>>) {
    let mut e = FileErrors::new(Path::new("policies").join("validation.yaml"), sink);
    match read_yaml::<ValidationFileDef>(dir, &mut e) {
        Read::Parsed(Some(def)) => {
            let s = build_validation(&def, dir, &mut e);
            let names = s.ldap.keys().cloned().collect();
            (s, Some(names))
        }
        Read::Parsed(None) | Read::Missing => (ValidationSettings::default(), Some(Vec::new())),
        Read::Failed => (ValidationSettings::default(), None),
    }
}

fn build_validation(
    d: &ValidationFileDef,
    dir: &Path,
    e: &mut FileErrors<'_>,
) -> ValidationSettings {
    let mut s = ValidationSettings::default();
    if let Some(c) = &d.cache {
        let secs = |v: &Option<SpannedStr>, base: u64, path: &str, e: &mut FileErrors<'_>| {
            dur(v, Duration::from_secs(base), path, e).as_secs().max(1)
        };
        s.cache.max_entries = num(
            &c.max_entries,
            s.cache.max_entries as u64,
            100_000_000,
            "cache.max_entries",
            e,
        ) as usize;
        s.cache.valid_ttl = secs(&c.valid_ttl, s.cache.valid_ttl, "cache.valid_ttl", e);
        s.cache.valid_refresh = secs(
            &c.valid_refresh,
            s.cache.valid_refresh,
            "cache.valid_refresh",
            e,
        );
        s.cache.invalid_ttl = secs(&c.invalid_ttl, s.cache.invalid_ttl, "cache.invalid_ttl", e);
        s.save_every = dur(&c.save_every, s.save_every, "cache.save_every", e);
        if let Some(r) = &c.valid_refresh {
            if s.cache.valid_refresh >= s.cache.valid_ttl {
                e.on(
                    r,
                    "cache.valid_refresh",
                    "must be shorter than valid_ttl (a valid answer is refreshed before it expires)",
                );
            }
        }
    }
    if let Some(c) = &d.callahead {
        let base = s.callahead.clone();
        if let Some(m) = &c.mail_from {
            let v = m.value.trim().trim_start_matches('<').trim_end_matches('>');
            match v.is_empty() || check_sender(v).is_ok() {
                true => s.callahead.mail_from = v.to_string(),
                false => e.on(
                    m,
                    "callahead.mail_from",
                    format!(
                        "{:?} is not an address: write <> (the null sender) or user@domain",
                        m.value
                    ),
                ),
            }
        }
        s.callahead.timeout = dur(&c.timeout, base.timeout, "callahead.timeout", e);
        s.callahead.max_concurrency = num(
            &c.max_concurrency,
            base.max_concurrency as u64,
            1000,
            "callahead.max_concurrency",
            e,
        ) as usize;
        s.callahead.max_waiting = num(
            &c.max_waiting,
            base.max_waiting as u64,
            100_000,
            "callahead.max_waiting",
            e,
        ) as usize;
        s.callahead.max_probes_per_connection = num(
            &c.max_probes_per_connection,
            base.max_probes_per_connection.into(),
            100_000,
            "callahead.max_probes_per_connection",
            e,
        ) as u32;
        s.callahead.idle_timeout = dur(
            &c.idle_timeout,
            base.idle_timeout,
            "callahead.idle_timeout",
            e,
        );
        if let Some(b) = &c.detect_catch_all {
            match parse_bool(&b.value) {
                Ok(v) => s.detect_catch_all = v,
                Err(m) => e.on(b, "callahead.detect_catch_all", m),
            }
        }
        s.callahead_breaker = breaker(c.breaker.as_ref(), "callahead.breaker", e);
    }
    for (name, def) in d.ldap.iter().flat_map(|m| m.0.iter()) {
        let key = name.value.trim().to_string();
        let path = join("ldap", &key);
        if key.is_empty() || key.contains(char::is_whitespace) {
            e.on(name, &path, "an LDAP directory name is one word");
        }
        let empty = LdapDef::default();
        let d = def.as_ref().unwrap_or(&empty);
        if let Some(l) = build_ldap(d, name, dir, &path, e) {
            s.ldap.insert(key, l);
        }
    }
    s
}

fn build_ldap(
    d: &LdapDef,
    name: &SpannedStr,
    dir: &Path,
    path: &str,
    e: &mut FileErrors<'_>,
) -> Option<LdapDirectorySettings> {
    let required = |v: &Option<SpannedStr>, key: &str, e: &mut FileErrors<'_>| match v {
        Some(s) if !s.value.trim().is_empty() => Some(s.value.trim().to_string()),
        Some(s) => {
            e.on(s, join(path, key), format!("`{key}` is empty"));
            None
        }
        None => {
            e.on(
                name,
                join(path, key),
                format!("missing required key `{key}`"),
            );
            None
        }
    };
    let url = required(&d.url, "url", e);
    if let (Some(u), Some(s)) = (&url, &d.url) {
        if !(u.starts_with("ldap://") || u.starts_with("ldaps://")) {
            e.on(
                s,
                join(path, "url"),
                "write ldap://host:389 or ldaps://host:636",
            );
        }
    }
    let base = required(&d.base, "base", e);
    let filter = required(&d.filter, "filter", e);
    if let (Some(f), Some(s)) = (&filter, &d.filter) {
        // Parsed as a search would send it (with a sample address), so a typo fails here,
        // not as a tempfail at every RCPT.
        let sample = crate::validate::ldap::build_filter(f, "user@example.com");
        if ldap3::parse_filter(&sample).is_err() {
            e.on(
                s,
                join(path, "filter"),
                format!("{f:?} is not an LDAP filter (RFC 4515): check its parentheses, e.g. (mail={{address}})"),
            );
        } else if !["{address}", "{local}"].iter().any(|p| f.contains(p)) {
            e.on(
                s,
                join(path, "filter"),
                "the filter must use {address} or {local}: without it every recipient matches the same entries",
            );
        }
    }
    let starttls = match &d.starttls {
        Some(s) => parse_bool(&s.value).unwrap_or_else(|m| {
            e.on(s, join(path, "starttls"), m);
            false
        }),
        None => false,
    };
    let ca_file = d
        .ca_file
        .as_ref()
        .and_then(|s| super::destinations::ca_file(s, dir, &join(path, "ca_file"), e));
    let password = match &d.password_file {
        Some(p) => {
            let full = dir.join(p.value.trim());
            match std::fs::read_to_string(&full) {
                // One line: a trailing newline from `echo` is not part of the password.
                Ok(t) => t.trim_end_matches(['\r', '\n']).to_string(),
                Err(err) => {
                    e.on(
                        p,
                        join(path, "password_file"),
                        format!("cannot read {}: {err}", full.display()),
                    );
                    String::new()
                }
            }
        }
        None => String::new(),
    };
    let bind_dn = d
        .bind_dn
        .as_ref()
        .map(|s| s.value.trim().to_string())
        .unwrap_or_default();
    if !bind_dn.is_empty() && d.password_file.is_none() {
        e.on(
            name,
            join(path, "password_file"),
            "bind_dn needs password_file (the password is never written in the YAML)",
        );
    }
    Some(LdapDirectorySettings {
        url: url?,
        starttls,
        ca_file,
        bind_dn,
        password,
        base: base?,
        filter: filter?,
        timeout: dur(
            &d.timeout,
            Duration::from_secs(5),
            &join(path, "timeout"),
            e,
        ),
        max_connections: num(
            &d.max_connections,
            4,
            1000,
            &join(path, "max_connections"),
            e,
        ) as usize,
        breaker: breaker(d.breaker.as_ref(), &join(path, "breaker"), e),
    })
}

/// The validation rule of a RAT entry; `None` for `validate: none` (or absent).
pub(crate) fn build_entry_validation(
    d: &RatEntryDef,
    accepts: bool,
    pattern: Option<&RecipientPattern>,
    path: &str,
    ctx: &ValidationContext<'_>,
    e: &mut FileErrors<'_>,
) -> Option<Arc<RecipientValidation>> {
    let Some(v) = &d.validate else {
        let orphans = [
            ("on_tempfail", d.on_tempfail.as_ref().map(Pos::of)),
            ("invalid_reply", d.invalid_reply.as_ref().map(Pos::of)),
            ("tempfail_reply", d.tempfail_reply.as_ref().map(Pos::of)),
        ];
        for (key, at) in orphans {
            if let Some(at) = at {
                e.at(
                    at,
                    join(path, key),
                    format!("`{key}` needs `validate:` on the same entry"),
                );
            }
        }
        return None;
    };
    let vpath = join(path, "validate");
    let method = match &v.value {
        ValidateDef::Word(w) => match w.trim().to_ascii_lowercase().as_str() {
            "none" => return None,
            "callahead" => Some(ValidationMethod::Callahead),
            other => {
                e.on(
                    v,
                    &vpath,
                    format!("{other:?}: write none, callahead, {{list: FILE}} or {{ldap: NAME}}"),
                );
                None
            }
        },
        ValidateDef::Map(m) => match (&m.list, &m.ldap) {
            (Some(f), None) => {
                let full = ctx.dir.join(f.value.trim());
                match RecipientList::load(&full) {
                    // An empty export (a failed cron job) would refuse every user for good.
                    Ok(list) if list.is_empty() => {
                        e.on(
                            f,
                            join(&vpath, "list"),
                            format!(
                                "{} lists no address: every recipient of this entry would be refused (an export that failed?)",
                                full.display()
                            ),
                        );
                        None
                    }
                    Ok(list) => Some(ValidationMethod::List(Arc::new(list))),
                    Err(errs) => {
                        let text: Vec<String> =
                            errs.iter().take(5).map(|x| x.to_string()).collect();
                        e.on(f, join(&vpath, "list"), text.join("; "));
                        None
                    }
                }
            }
            (None, Some(n)) => {
                let name = n.value.trim().to_string();
                match &ctx.ldap_names {
                    Some(names) if !names.contains(&name) => {
                        e.on(
                            n,
                            join(&vpath, "ldap"),
                            format!(
                                "no LDAP directory {name:?} in policies/validation.yaml (ldap: {{{name}: {{url, base, filter, ...}}}})"
                            ),
                        );
                        None
                    }
                    _ => Some(ValidationMethod::Ldap(name)),
                }
            }
            _ => {
                e.on(
                    v,
                    &vpath,
                    "write exactly one of {list: FILE} or {ldap: NAME}",
                );
                None
            }
        },
    }?;
    if !accepts {
        e.on(
            v,
            &vpath,
            "only an accepting entry validates its recipients (this one rejects)",
        );
        return None;
    }
    if method == ValidationMethod::Callahead {
        let domain = match pattern {
            Some(RecipientPattern::Domain(d)) => Some(d.clone()),
            Some(RecipientPattern::Address(a)) => a.rsplit_once('@').map(|(_, d)| d.to_string()),
            _ => None,
        };
        if let Some(domain) = domain {
            match ctx.routes.route_for(&domain) {
                None => e.on(
                    v,
                    &vpath,
                    format!(
                        "no SMTP route covers {domain}: a call-ahead asks the route's internal server (add it to policies/routes.yaml)"
                    ),
                ),
                Some(r) if r.mx_lookup => e.on(
                    v,
                    &vpath,
                    format!(
                        "the route of {domain} uses mx_lookup: a call-ahead needs the internal server's host, not MX records"
                    ),
                ),
                Some(_) => {}
            }
        }
    }
    let mut rule = RecipientValidation::new(method);
    if let Some(t) = &d.on_tempfail {
        match t.value.trim().to_ascii_lowercase().as_str() {
            "tempfail" => rule.on_tempfail = OnTempFail::TempFail,
            "accept" => rule.on_tempfail = OnTempFail::Accept,
            _ => e.on(
                t,
                join(path, "on_tempfail"),
                format!(
                    "{:?}: write tempfail (answer 4xx, the default) or accept",
                    t.value
                ),
            ),
        }
    }
    if let Some(r) = &d.invalid_reply {
        rule.invalid_reply = reply(
            &r.value,
            rule.invalid_reply,
            5,
            &join(path, "invalid_reply"),
            e,
        );
    }
    if let Some(r) = &d.tempfail_reply {
        rule.tempfail_reply = reply(
            &r.value,
            rule.tempfail_reply,
            4,
            &join(path, "tempfail_reply"),
            e,
        );
    }
    Some(Arc::new(rule))
}

/// Merges a reply of class `digit` (5: invalid, 4: tempfail) over its default.
fn reply(r: &ReplyDef, base: Reply, digit: u16, path: &str, e: &mut FileErrors<'_>) -> Reply {
    let p = merge_reply(
        Parts {
            code: base.code,
            enhanced: base.enhanced,
            text: base.text.to_string(),
        },
        &r.into(),
        Class::Failure,
        e,
        path,
    );
    if p.code / 100 != digit {
        if let Some(c) = &r.code {
            e.on(
                c,
                join(path, "code"),
                format!("reply code {} must be {digit}xx here", p.code),
            );
        }
        return base;
    }
    Reply {
        code: p.code,
        enhanced: p.enhanced,
        text: p.text.into(),
    }
}
