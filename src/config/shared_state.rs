//! `shared_state:` in `mxgate.yaml` (optional): the Redis/Valkey store several gateways share
//! their per-client counters in (docs/shared-state.md). Without it every count stays local.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::defs::SpannedStr;
use super::error::FileErrors;
use super::load::duration;
use crate::shared_state::settings::{Fallback, SharedStateSettings, WhenUnavailable};

/// `shared_state:` in `mxgate.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SharedStateDef {
    /// `redis://host:port/db` or `rediss://` for TLS (required); no password in it.
    #[serde(default)]
    pub url: Option<SpannedStr>,
    /// File whose first line is the password, relative to the config dir.
    #[serde(default)]
    pub password_file: Option<SpannedStr>,
    /// PEM trust anchors for a `rediss://` server with a private CA, relative to the config dir.
    #[serde(default)]
    pub ca_file: Option<SpannedStr>,
    /// Prefix of every key (default `mxgate:`).
    #[serde(default)]
    pub key_prefix: Option<SpannedStr>,
    /// Longest wait for the store on the path of an SMTP reply (default `50ms`).
    #[serde(default)]
    pub timeout: Option<SpannedStr>,
    /// Per counter: `local` (default) or `tempfail` while the store does not answer.
    #[serde(default)]
    pub when_unavailable: Option<WhenUnavailableDef>,
}

/// `shared_state.when_unavailable:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WhenUnavailableDef {
    /// Concurrent connections per client IP (`tempfail`: 421 4.3.0 at connect).
    #[serde(default)]
    pub connections: Option<SpannedStr>,
    /// Recipients per hour per client IP (`tempfail`: 451 4.3.0 at RCPT).
    #[serde(default)]
    pub recipients_per_hour: Option<SpannedStr>,
    /// Invalid recipients per hour per client IP (`tempfail`: 451 4.3.0 at RCPT).
    #[serde(default)]
    pub harvest: Option<SpannedStr>,
}

/// The longest `shared_state.timeout`.
const MAX_TIMEOUT: Duration = Duration::from_secs(5);

/// Default `shared_state.timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// Builds the settings of `shared_state:` (`None` when the section is absent or broken).
pub(super) fn build_shared_state(
    d: Option<&Spanned<SharedStateDef>>,
    dir: &Path,
    e: &mut FileErrors<'_>,
) -> Option<Arc<SharedStateSettings>> {
    let s = d?;
    let def = &s.value;
    let errors_before = e.count();
    let url = match &def.url {
        None => {
            e.on(
                s,
                "shared_state",
                "url is required: redis://host:port/db (or rediss:// for TLS)",
            );
            String::new()
        }
        Some(u) => match check_url(u.value.trim()) {
            Ok(()) => u.value.trim().to_string(),
            Err(m) => {
                e.on(u, "shared_state.url", m);
                String::new()
            }
        },
    };
    let password = def.password_file.as_ref().and_then(|p| {
        let path = dir.join(p.value.trim());
        match std::fs::read_to_string(&path) {
            Ok(text) => match text.lines().next().map(str::trim_end) {
                Some(first) if !first.is_empty() => Some(first.to_string()),
                _ => {
                    e.on(
                        p,
                        "shared_state.password_file",
                        format!("{}: the first line (the password) is empty", path.display()),
                    );
                    None
                }
            },
            Err(err) => {
                e.on(
                    p,
                    "shared_state.password_file",
                    format!("cannot read {}: {err}", path.display()),
                );
                None
            }
        }
    });
    let ca_file = def.ca_file.as_ref().and_then(|c| {
        let path = dir.join(c.value.trim());
        if !url.starts_with("rediss://") && !url.is_empty() {
            e.on(
                c,
                "shared_state.ca_file",
                "only used with a rediss:// (TLS) url",
            );
        }
        match std::fs::read(&path) {
            Ok(pem) if String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") => {
                Some(path)
            }
            Ok(_) => {
                e.on(
                    c,
                    "shared_state.ca_file",
                    format!("{}: no PEM certificate in it", path.display()),
                );
                None
            }
            Err(err) => {
                e.on(
                    c,
                    "shared_state.ca_file",
                    format!("cannot read {}: {err}", path.display()),
                );
                None
            }
        }
    });
    let key_prefix = match &def.key_prefix {
        Some(k) if k.value.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            e.on(
                k,
                "shared_state.key_prefix",
                "must not contain spaces or control characters",
            );
            String::new()
        }
        // Empty, the keys would mix with whatever else the store holds; long, every
        // command carries it.
        Some(k) if k.value.is_empty() || k.value.len() > 64 => {
            e.on(
                k,
                "shared_state.key_prefix",
                "must be 1 to 64 bytes (e.g. \"mxgate:\")",
            );
            String::new()
        }
        Some(k) => k.value.clone(),
        None => "mxgate:".to_string(),
    };
    let timeout = duration(
        &def.timeout,
        DEFAULT_TIMEOUT,
        false,
        "shared_state.timeout",
        e,
    );
    // Every SMTP reply that needs the store may wait this long: past a few seconds a
    // client's own command timeout is near, and the local fallback is the better answer.
    if let Some(t) = def.timeout.as_ref().filter(|_| timeout > MAX_TIMEOUT) {
        e.on(
            t,
            "shared_state.timeout",
            "is at most 5s (an SMTP reply waits this long for the store)",
        );
    }
    let w = def.when_unavailable.as_ref();
    let mut fallback = |v: Option<&SpannedStr>, key: &str| match v {
        None => Fallback::Local,
        Some(v) => match v.value.trim() {
            "local" => Fallback::Local,
            "tempfail" => Fallback::Tempfail,
            other => {
                e.on(
                    v,
                    format!("shared_state.when_unavailable.{key}"),
                    format!("{other:?} is not local or tempfail"),
                );
                Fallback::Local
            }
        },
    };
    let when_unavailable = WhenUnavailable {
        connections: fallback(w.and_then(|w| w.connections.as_ref()), "connections"),
        recipients_per_hour: fallback(
            w.and_then(|w| w.recipients_per_hour.as_ref()),
            "recipients_per_hour",
        ),
        harvest: fallback(w.and_then(|w| w.harvest.as_ref()), "harvest"),
    };
    if e.count() > errors_before {
        return None;
    }
    Some(Arc::new(SharedStateSettings {
        url,
        password,
        ca_file,
        key_prefix,
        timeout,
        when_unavailable,
    }))
}

/// Checks the URL's scheme and that it carries no password (the file has it: a URL is
/// printed, logged and shown by `ps`).
fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .ok_or_else(|| {
            let scheme = url.split_once("://").map_or("no scheme", |(s, _)| s);
            // Not the url itself: whatever it is, it may carry a password.
            format!("the url ({scheme}) is not a redis:// or rediss:// url (e.g. redis://127.0.0.1:6379/0)")
        })?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if userinfo.contains(':') {
            return Err("a password in the url is not allowed: use password_file".into());
        }
    }
    // The query is not where the client takes a password from (`?password=` would be sent
    // nowhere and printed everywhere): only the protocol may be chosen there.
    if let Some((_, query)) = rest.split_once('?') {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let name = pair.split('=').next().unwrap_or("");
            if name.eq_ignore_ascii_case("password") || name.eq_ignore_ascii_case("pass") {
                return Err("a password in the url is not allowed: use password_file".into());
            }
            if !name.eq_ignore_ascii_case("protocol") {
                return Err(format!(
                    "url parameter {name:?} is not supported (only protocol=)"
                ));
            }
        }
    }
    let path = rest.split('?').next().unwrap_or("");
    if let Some((_, db)) = path.split_once('/') {
        if !db.is_empty() && db.parse::<u16>().is_err() {
            return Err(format!(
                "the database after the host is a number (redis://host:port/0), not {db:?}"
            ));
        }
    }
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|err| format!("{url:?}: {err}"))
}
