//! `policies/destinations.yaml`: destination controls (per-domain connection and
//! message limits, outbound TLS, the required-TLS alert, the client certificate) from
//! their `*Def` forms.
//!
//! Without `destinations.yaml` the built-in default controls apply to every domain.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_saphyr::Spanned;

use crate::dns::name::is_host_name;

use super::defs::{DestinationDef, DestinationsDef, SpannedStr, TlsAlertDef};
use super::error::{index, join, FileErrors, Pos};
use super::outbound::{
    DestinationControl, DestinationControls, DomainMatch, OutboundTls, TlsAlert,
};
use super::routes::{domain_key, first_of, ranged};
use super::values::{parse_bool, parse_duration};
/// Parses a count that must be at least 1.
fn count(v: &Option<SpannedStr>, base: u32, path: &str, e: &mut FileErrors<'_>) -> u32 {
    match v {
        Some(s) => ranged(s, 1, u64::from(u32::MAX), e, path)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(base),
        None => base,
    }
}

/// Resolves and checks a CA bundle: it must exist and hold at least one PEM certificate.
pub(super) fn ca_file(
    s: &Spanned<Option<String>>,
    dir: &Path,
    path: &str,
    e: &mut FileErrors<'_>,
) -> Option<PathBuf> {
    let t = s.value.as_deref()?.trim();
    if t.is_empty() {
        e.on(
            s,
            path,
            "path is empty: write a PEM file, or null for the webpki roots",
        );
        return None;
    }
    let full = dir.join(t);
    if !full.is_file() {
        e.on(
            s,
            path,
            format!("CA bundle {t:?} not found (relative paths start at the config directory)"),
        );
        return None;
    }
    let certs = CertificateDer::pem_file_iter(&full)
        .map_err(|err| err.to_string())
        .and_then(|it| {
            it.collect::<Result<Vec<_>, _>>()
                .map_err(|err| err.to_string())
        });
    match certs {
        Ok(c) if c.is_empty() => {
            e.on(
                s,
                path,
                format!("CA bundle {t:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
            );
            None
        }
        Ok(_) => Some(full),
        Err(m) => {
            e.on(s, path, format!("cannot read CA bundle {t:?}: {m}"));
            None
        }
    }
}

/// Applies a destination Def over `base` (the resolved default).
fn apply_destination(
    base: &DestinationControl,
    d: &DestinationDef,
    dir: &Path,
    path: &str,
    e: &mut FileErrors<'_>,
) -> DestinationControl {
    let tls = match &d.tls {
        Some(s) => s.value.parse::<OutboundTls>().unwrap_or_else(|m| {
            e.on(s, join(path, "tls"), m);
            base.tls
        }),
        None => base.tls,
    };
    let ca_file = match &d.ca_file {
        Some(s) => ca_file(s, dir, &join(path, "ca_file"), e),
        None => base.ca_file.clone(),
    };
    DestinationControl {
        domain: base.domain.clone(),
        max_concurrent_connections: count(
            &d.max_concurrent_connections,
            base.max_concurrent_connections,
            &join(path, "max_concurrent_connections"),
            e,
        ),
        max_messages_per_connection: count(
            &d.max_messages_per_connection,
            base.max_messages_per_connection,
            &join(path, "max_messages_per_connection"),
            e,
        ),
        max_recipients_per_message: count(
            &d.max_recipients_per_message,
            base.max_recipients_per_message,
            &join(path, "max_recipients_per_message"),
            e,
        ),
        tls,
        ca_file,
    }
}

/// Checks a mail address (`postmaster@example.com`).
pub(crate) fn check_address(s: &str) -> Result<String, String> {
    let t = s.trim();
    let bad = || format!("{t:?} is not a mail address (e.g. postmaster@example.com)");
    let (local, domain) = t.rsplit_once('@').ok_or_else(bad)?;
    let domain = domain.to_ascii_lowercase();
    if local.is_empty()
        || local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>@,;".contains(c))
        || !is_host_name(&domain)
    {
        return Err(bad());
    }
    Ok(format!("{local}@{domain}"))
}

/// Builds the required-TLS failure alert.
fn build_alert(d: &TlsAlertDef, e: &mut FileErrors<'_>) -> TlsAlert {
    let base = TlsAlert::default();
    let path = "alert_on_required_tls_failure";
    let enabled = match &d.enabled {
        Some(s) => parse_bool(&s.value).unwrap_or_else(|m| {
            e.on(s, join(path, "enabled"), m);
            base.enabled
        }),
        None => base.enabled,
    };
    let interval = match &d.interval {
        Some(s) => match parse_duration(&s.value) {
            Ok(x) if x.is_zero() => {
                e.on(s, join(path, "interval"), "must be longer than 0");
                base.interval
            }
            Ok(x) => x,
            Err(m) => {
                e.on(s, join(path, "interval"), m);
                base.interval
            }
        },
        None => base.interval,
    };
    let mail_to = match &d.mail_to {
        Some(s @ Spanned { value: Some(v), .. }) => check_address(v)
            .map_err(|m| {
                e.on(
                    s,
                    join(path, "mail_to"),
                    format!("{m}, or null for no mail"),
                )
            })
            .ok(),
        _ => None,
    };
    TlsAlert {
        enabled,
        interval,
        mail_to,
    }
}

/// Checks `client_certificate`: a name in `certs_dir` with `NAME.crt` and `NAME.key`.
fn client_certificate(
    s: &Spanned<Option<String>>,
    certs_dir: &Path,
    e: &mut FileErrors<'_>,
) -> Option<String> {
    let path = "client_certificate";
    let name = s.value.as_deref()?.trim();
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    {
        e.on(
            s,
            path,
            format!("{name:?} is not a certificate name: write NAME for certs_dir/NAME.crt and NAME.key, or null"),
        );
        return None;
    }
    if name == "demo" {
        // Generated on first start like the listeners' demo certificate.
        return Some(name.to_string());
    }
    let missing: Vec<String> = ["crt", "key"]
        .iter()
        .map(|ext| format!("{name}.{ext}"))
        .filter(|f| !certs_dir.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        e.on(
            s,
            path,
            format!(
                "certificate {name:?} not found: certs_dir has no {}",
                missing.join(" and no ")
            ),
        );
        return None;
    }
    Some(name.to_string())
}

/// Builds the destination controls.
pub(crate) fn build_destinations(
    def: &DestinationsDef,
    dir: &Path,
    certs_dir: &Path,
    e: &mut FileErrors<'_>,
) -> DestinationControls {
    let builtin = DestinationControl::builtin_default();
    let default = match &def.default {
        Some(d) => {
            if let Some(dom) = &d.value.domain {
                e.on(
                    dom,
                    "default.domain",
                    "`default` applies to every domain: remove `domain`, or add an entry under `destinations`",
                );
            }
            apply_destination(&builtin, &d.value, dir, "default", e)
        }
        None => builtin,
    };
    let mut entries = Vec::new();
    let mut seen: BTreeMap<String, Pos> = BTreeMap::new();
    for (i, d) in def.destinations.iter().flatten().enumerate() {
        let path = index("destinations", i);
        let domain = match domain_key(&d.value.domain, Pos::of(d), &path, e) {
            Some((DomainMatch::All, at)) => {
                e.at(
                    at,
                    join(&path, "domain"),
                    "ALL is not a destination entry: set its values under `default`",
                );
                None
            }
            Some((dm, at)) => Some((dm, at))
                .filter(|(dm, at)| first_of(dm, *at, &mut seen, "destination", &path, e)),
            None => None,
        };
        let mut c = apply_destination(&default, &d.value, dir, &path, e);
        if let Some((dm, _)) = domain {
            c.domain = dm;
            entries.push(c);
        }
    }
    let alert = def
        .alert_on_required_tls_failure
        .as_ref()
        .map(|a| build_alert(a, e))
        .unwrap_or_default();
    let client_certificate = def
        .client_certificate
        .as_ref()
        .and_then(|s| client_certificate(s, certs_dir, e));
    DestinationControls {
        default,
        entries,
        alert,
        client_certificate,
    }
}
