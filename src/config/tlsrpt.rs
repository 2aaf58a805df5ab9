//! `policies/tlsrpt.yaml` (optional): where TLS-RPT reports (RFC 8460) are received — report
//! addresses intercepted at RCPT, and a path on the MTA-STS endpoint for HTTPS POSTs — and
//! how many stored reports are kept. Without the file nothing is intercepted.

use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::defs::SpannedStr;
use super::error::{index, ConfigError, FileErrors};
use super::load::{read_yaml, Read};
use super::values::{parse_bool, parse_count, parse_size};
use crate::mta_sts::http::WELL_KNOWN_PATH;
use crate::mta_sts::MtaStsSettings;
use crate::smtp::address::parse_path;
use crate::tlsrpt::domains::PolicyDomains;
use crate::tlsrpt::settings::{TlsRptSettings, DEFAULT_MAX_REPORTS, DEFAULT_MAX_STORE_BYTES};

/// `policies/tlsrpt.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsRptDef {
    /// Report addresses (`rua=mailto:`).
    #[serde(default)]
    pub addresses: Option<Spanned<Vec<SpannedStr>>>,
    /// Deliver report mail to the internal server too (default false).
    #[serde(default)]
    pub relay: Option<SpannedStr>,
    /// Path of the HTTPS intake on the MTA-STS endpoint (`rua=https:`).
    #[serde(default)]
    pub https_path: Option<SpannedStr>,
    /// `policy_domain` label values (default: the MTA-STS domains and the addresses' domains).
    #[serde(default)]
    pub domains: Option<Spanned<Vec<SpannedStr>>>,
    /// Most reports kept.
    #[serde(default)]
    pub max_reports: Option<SpannedStr>,
    /// Most bytes of reports kept.
    #[serde(default)]
    pub max_store_size: Option<SpannedStr>,
}

/// Reads `policies/tlsrpt.yaml`; `None` when it is absent, empty or wrong (errors recorded).
pub(crate) fn load_tlsrpt(
    dir: &Path,
    mta_sts: Option<&MtaStsSettings>,
    sink: &mut Vec<ConfigError>,
) -> Option<TlsRptSettings> {
    // A broken mta_sts.yaml has its own errors: https_path is not one more. (A file with every
    // line commented out is no endpoint.)
    let mta_sts_file = Path::new("policies").join("mta_sts.yaml");
    let endpoint = mta_sts.is_some() || sink.iter().any(|e| e.file == mta_sts_file);
    let mut e = FileErrors::new(Path::new("policies").join("tlsrpt.yaml"), sink);
    match read_yaml::<TlsRptDef>(dir, &mut e) {
        Read::Parsed(Some(def)) => build_tlsrpt(&def, mta_sts, endpoint, &mut e),
        Read::Parsed(None) | Read::Missing | Read::Failed => None,
    }
}

/// Local parts other mail must keep reaching (RFC 2142): never a report address, whose mail
/// is taken for its report and otherwise refused.
const RESERVED_LOCAL_PARTS: &[&str] =
    &["postmaster", "abuse", "hostmaster", "webmaster", "security"];

/// One report address: `local@domain`, lower-cased.
fn address(s: &SpannedStr, path: &str, e: &mut FileErrors<'_>) -> Option<String> {
    let raw = s.value.trim();
    let bracketed = format!("<{}>", raw.trim_start_matches('<').trim_end_matches('>'));
    match parse_path(&bracketed) {
        Ok((Some(m), _))
            if RESERVED_LOCAL_PARTS
                .iter()
                .any(|r| m.local.eq_ignore_ascii_case(r)) =>
        {
            e.on(
                s,
                path,
                format!("{raw:?}: mail to a report address is taken for its report and otherwise refused, so it cannot be {}@ (RFC 2142); use a dedicated address such as tlsrpt@{}", m.local, m.domain),
            );
            None
        }
        Ok((Some(m), n))
            if n == bracketed.len() && !m.domain.is_empty() && !m.is_relay_attempt() =>
        {
            Some(m.address().to_ascii_lowercase())
        }
        _ => {
            e.on(
                s,
                path,
                format!(
                    "{raw:?} is not a mail address (write local@domain, e.g. tlsrpt@example.com)"
                ),
            );
            None
        }
    }
}

/// Builds the settings, recording every error; `None` when there was one. `endpoint`: an
/// MTA-STS endpoint is configured (the HTTPS intake runs on it).
pub(crate) fn build_tlsrpt(
    def: &TlsRptDef,
    mta_sts: Option<&MtaStsSettings>,
    endpoint: bool,
    e: &mut FileErrors<'_>,
) -> Option<TlsRptSettings> {
    let mut ok = true;
    let mut addresses: Vec<String> = Vec::new();
    if let Some(list) = &def.addresses {
        for (i, s) in list.value.iter().enumerate() {
            let path = index("addresses", i);
            match address(s, &path, e) {
                Some(a) if addresses.contains(&a) => {
                    e.on(s, &path, format!("{a} is listed twice"));
                    ok = false;
                }
                Some(a) => addresses.push(a),
                None => ok = false,
            }
        }
    }
    let relay = match &def.relay {
        Some(s) => parse_bool(&s.value).unwrap_or_else(|m| {
            e.on(s, "relay", m);
            ok = false;
            false
        }),
        None => false,
    };
    let https_path = match &def.https_path {
        None => None,
        Some(s) => {
            let p = s.value.trim();
            let valid = p.starts_with('/')
                && p.len() > 1
                && p.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
            if !valid {
                e.on(
                    s,
                    "https_path",
                    format!("{p:?}: write an absolute URL path, e.g. /tlsrpt"),
                );
                ok = false;
            } else if p == WELL_KNOWN_PATH {
                e.on(s, "https_path", format!("{p} is where the MTA-STS policy is served: pick another path, e.g. /tlsrpt"));
                ok = false;
            } else if !endpoint {
                e.on(s, "https_path", "reports are POSTed to the MTA-STS endpoint: configure policies/mta_sts.yaml (listen, certificate, domains), or remove https_path");
                ok = false;
            }
            Some(p.to_string())
        }
    };
    if def.addresses.is_none() && def.https_path.is_none() {
        e.whole("nothing receives reports: list report addresses (addresses: [tlsrpt@example.com]) and/or set https_path");
        return None;
    }
    let domains = match &def.domains {
        Some(list) => {
            let mut names = Vec::new();
            for (i, s) in list.value.iter().enumerate() {
                let d = s.value.trim().trim_end_matches('.').to_ascii_lowercase();
                if !crate::dns::name::is_host_name(&d) || !d.contains('.') {
                    e.on(
                        s,
                        index("domains", i),
                        format!("{:?} is not a domain name", s.value),
                    );
                    ok = false;
                }
                names.push(d);
            }
            PolicyDomains::new(names)
        }
        None => {
            let mut names: Vec<String> = mta_sts
                .map(|m| m.domains.iter().map(|(d, _)| d.clone()).collect())
                .unwrap_or_default();
            names.extend(
                addresses
                    .iter()
                    .filter_map(|a| a.rsplit_once('@').map(|(_, d)| d.to_string())),
            );
            PolicyDomains::new(names)
        }
    };
    let max_reports = match &def.max_reports {
        Some(s) => match parse_count(&s.value) {
            Ok(n) if n >= 1 => n as usize,
            Ok(_) => {
                e.on(s, "max_reports", "keep at least 1 report");
                ok = false;
                DEFAULT_MAX_REPORTS
            }
            Err(m) => {
                e.on(s, "max_reports", m);
                ok = false;
                DEFAULT_MAX_REPORTS
            }
        },
        None => DEFAULT_MAX_REPORTS,
    };
    let max_store_bytes = match &def.max_store_size {
        Some(s) => match parse_size(&s.value) {
            Ok(n) if n >= 1 << 20 => n,
            Ok(_) => {
                e.on(
                    s,
                    "max_store_size",
                    "at least 1MiB (one report may be 1 MiB)",
                );
                ok = false;
                DEFAULT_MAX_STORE_BYTES
            }
            Err(m) => {
                e.on(s, "max_store_size", m);
                ok = false;
                DEFAULT_MAX_STORE_BYTES
            }
        },
        None => DEFAULT_MAX_STORE_BYTES,
    };
    ok.then_some(TlsRptSettings {
        addresses,
        relay,
        https_path,
        domains,
        max_reports,
        max_store_bytes,
    })
}
