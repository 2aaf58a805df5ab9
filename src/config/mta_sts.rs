//! `policies/mta_sts.yaml` (optional): the MTA-STS policy endpoint and the policy of each
//! domain (RFC 8461). Without the file no endpoint is started.

use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::defs::{NamedMap, SpannedStr};
use super::error::{index, join, ConfigError, FileErrors};
use super::load::{read_yaml, Read};
use super::values::{parse_duration, parse_listen_addr};
use crate::dns::name::is_host_name;
use crate::mta_sts::policy::{is_mx_pattern, Mode, Policy, MAX_AGE_LIMIT};
use crate::mta_sts::MtaStsSettings;

/// Default `max_age`: one week.
const DEFAULT_MAX_AGE: u64 = 7 * 86_400;

/// `policies/mta_sts.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MtaStsDef {
    /// Addresses of the HTTPS endpoint (required, at least one).
    #[serde(default)]
    pub listen: Option<Spanned<Vec<SpannedStr>>>,
    /// Certificate name in `certs_dir` (`NAME.crt`, `NAME.key`); absent or `demo`: generated.
    #[serde(default)]
    pub certificate: Option<SpannedStr>,
    /// `max_age` of every policy (default `1w`).
    #[serde(default)]
    pub max_age: Option<SpannedStr>,
    /// The policy of each domain (required, at least one).
    #[serde(default)]
    pub domains: Option<Spanned<NamedMap<Option<Spanned<DomainDef>>>>>,
}

/// One domain under `domains:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DomainDef {
    /// `enforce`, `testing` or `none` (default `testing`).
    #[serde(default)]
    pub mode: Option<SpannedStr>,
    /// MX patterns (default: the public listeners' host names).
    #[serde(default)]
    pub mx: Option<Spanned<Vec<SpannedStr>>>,
    /// Overrides the file's `max_age` for this domain.
    #[serde(default)]
    pub max_age: Option<SpannedStr>,
}

/// Reads `policies/mta_sts.yaml`; `None` when it is absent, empty or wrong (errors recorded).
/// `public_hosts` are the public listeners' host names, the default `mx:` list.
pub(crate) fn load_mta_sts(
    dir: &Path,
    certs_dir: &Path,
    public_hosts: &[String],
    sink: &mut Vec<ConfigError>,
) -> Option<MtaStsSettings> {
    let mut e = FileErrors::new(Path::new("policies").join("mta_sts.yaml"), sink);
    match read_yaml::<MtaStsDef>(dir, &mut e) {
        Read::Parsed(Some(def)) => build_mta_sts(&def, certs_dir, public_hosts, &mut e),
        Read::Parsed(None) | Read::Missing | Read::Failed => None,
    }
}

/// Parses a `max_age`: a duration of at most [`MAX_AGE_LIMIT`] seconds.
fn max_age(s: &SpannedStr, path: &str, e: &mut FileErrors<'_>) -> Option<u64> {
    match parse_duration(&s.value) {
        Ok(d) if d.as_secs() <= MAX_AGE_LIMIT && d.subsec_nanos() == 0 => Some(d.as_secs()),
        Ok(_) => {
            e.on(
                s,
                path,
                format!(
                    "{:?} is out of range: whole seconds up to {MAX_AGE_LIMIT} (RFC 8461: about a year, e.g. 1w or 52w)",
                    s.value.trim()
                ),
            );
            None
        }
        Err(m) => {
            e.on(s, path, m);
            None
        }
    }
}

/// Builds the settings, recording every error; `None` when there was one.
pub(crate) fn build_mta_sts(
    def: &MtaStsDef,
    certs_dir: &Path,
    public_hosts: &[String],
    e: &mut FileErrors<'_>,
) -> Option<MtaStsSettings> {
    let mut ok = true;
    let mut listen = Vec::new();
    match &def.listen {
        None => {
            e.whole("missing required key `listen` (e.g. listen: [\"0.0.0.0:443\"])");
            ok = false;
        }
        Some(list) if list.value.is_empty() => {
            e.on(list, "listen", "list at least one address to listen on");
            ok = false;
        }
        Some(list) => {
            for (i, s) in list.value.iter().enumerate() {
                match parse_listen_addr(&s.value) {
                    Ok(a) if listen.contains(&a) => {
                        e.on(s, index("listen", i), format!("{a} is listed twice"));
                        ok = false;
                    }
                    Ok(a) => listen.push(a),
                    Err(m) => {
                        e.on(s, index("listen", i), m);
                        ok = false;
                    }
                }
            }
        }
    }
    let certificate = match def.certificate.as_ref().map(|c| (c, c.value.trim())) {
        None | Some((_, "demo")) => None,
        Some((c, name)) if name.is_empty() || name.contains('/') || name.starts_with('.') => {
            e.on(
                c,
                "certificate",
                format!("{name:?}: write a certificate name in certs_dir (NAME.crt and NAME.key), or demo"),
            );
            ok = false;
            None
        }
        Some((_, name)) => Some((
            certs_dir.join(format!("{name}.crt")),
            certs_dir.join(format!("{name}.key")),
        )),
    };
    let default_age = match &def.max_age {
        Some(s) => max_age(s, "max_age", e).unwrap_or_else(|| {
            ok = false;
            DEFAULT_MAX_AGE
        }),
        None => DEFAULT_MAX_AGE,
    };
    let mut domains: Vec<(String, Policy)> = Vec::new();
    let entries = match &def.domains {
        None => {
            e.whole(
                "missing required key `domains` (e.g. domains: {example.com: {mode: testing}})",
            );
            return None;
        }
        Some(d) if d.value.0.is_empty() => {
            e.on(d, "domains", "list at least one domain");
            return None;
        }
        Some(d) => &d.value.0,
    };
    for (key, value) in entries {
        let name = key.value.trim().trim_end_matches('.').to_ascii_lowercase();
        let path = join("domains", &name);
        if !is_host_name(&name) || !name.contains('.') {
            e.on(
                key,
                "domains",
                format!("{:?} is not a domain name", key.value),
            );
            ok = false;
            continue;
        }
        if domains.iter().any(|(d, _)| *d == name) {
            e.on(key, &path, format!("domain {name} is listed twice"));
            ok = false;
            continue;
        }
        let d = value.as_ref().map(|v| &v.value);
        let mode = match d.and_then(|d| d.mode.as_ref()) {
            Some(s) => Mode::parse(&s.value).unwrap_or_else(|m| {
                e.on(s, join(&path, "mode"), m);
                ok = false;
                Mode::Testing
            }),
            None => Mode::Testing,
        };
        let age = match d.and_then(|d| d.max_age.as_ref()) {
            Some(s) => max_age(s, &join(&path, "max_age"), e).unwrap_or_else(|| {
                ok = false;
                default_age
            }),
            None => default_age,
        };
        let mut mx: Vec<String> = Vec::new();
        match d.and_then(|d| d.mx.as_ref()) {
            Some(list) if list.value.is_empty() => {
                e.on(list, join(&path, "mx"), "list at least one MX host name");
                ok = false;
            }
            Some(list) => {
                for (i, s) in list.value.iter().enumerate() {
                    let p = s.value.trim().trim_end_matches('.').to_ascii_lowercase();
                    if !is_mx_pattern(&p) {
                        e.on(
                            s,
                            index(&join(&path, "mx"), i),
                            format!(
                                "{:?} is not an MX host name or a *.example.com wildcard",
                                s.value
                            ),
                        );
                        ok = false;
                    } else if !mx.contains(&p) {
                        mx.push(p);
                    }
                }
            }
            None if public_hosts.is_empty() => {
                e.on(
                    key,
                    join(&path, "mx"),
                    "no public listener to take the MX host names from: list them under mx:",
                );
                ok = false;
            }
            None => {
                for h in public_hosts {
                    let h = h.trim_end_matches('.').to_ascii_lowercase();
                    if !mx.contains(&h) {
                        mx.push(h);
                    }
                }
            }
        }
        let policy = Policy {
            mode,
            mx,
            max_age: age,
        };
        // An explicit list that names none of our public listeners: senders applying the
        // policy would refuse every MX this gateway answers as.
        if let Some(list) = d.and_then(|d| d.mx.as_ref()) {
            let ours = public_hosts.iter().any(|h| {
                crate::dnscheck::checks::matching_pattern(&policy, &h.to_ascii_lowercase())
                    .is_some()
            });
            if ok && !public_hosts.is_empty() && !ours {
                e.warn_on(
                    list,
                    &join(&path, "mx"),
                    format!(
                        "no pattern matches a public listener's host name ({}): senders applying the policy refuse an MX it does not list; add them, or check that the MX records name other gateways (`mxgate dns check {name}`)",
                        public_hosts.join(", ")
                    ),
                );
            }
        }
        domains.push((name, policy));
    }
    ok.then_some(MtaStsSettings {
        listen,
        certificate,
        domains,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `text` as `policies/mta_sts.yaml` with public listener `mx.example.com`.
    fn load(text: &str) -> Result<Option<MtaStsSettings>, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/mta_sts.yaml"), text).unwrap();
        let mut sink = Vec::new();
        let hosts = vec!["mx.example.com".to_string(), "MX.example.com".to_string()];
        let s = load_mta_sts(dir.path(), Path::new("/c"), &hosts, &mut sink);
        sink.retain(|e| !e.is_warning());
        if sink.is_empty() {
            Ok(s)
        } else {
            Err(sink.iter().map(ConfigError::render).collect())
        }
    }

    #[test]
    fn an_mx_list_naming_none_of_our_listeners_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        let text = "listen: [\"127.0.0.1:8443\"]\ndomains:\n  a.example: {mx: [\"*.example.com\"]}\n  b.example: {mx: [mx1.other.example]}\n";
        std::fs::write(dir.path().join("policies/mta_sts.yaml"), text).unwrap();
        let mut sink = Vec::new();
        let hosts = vec!["mx.example.com".to_string()];
        assert!(load_mta_sts(dir.path(), Path::new("/c"), &hosts, &mut sink).is_some());
        let got: Vec<String> = sink.iter().map(ConfigError::render).collect();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("policies/mta_sts.yaml:4:19: warning: domains.b.example.mx: no pattern matches a public listener's host name (mx.example.com)"), "{got:?}");
    }

    #[test]
    fn defaults_mx_from_public_listeners_and_one_week() {
        let s = load("listen: [\"127.0.0.1:8443\"]\ndomains:\n  Example.com: {}\n  example.org:\n    mode: enforce\n    mx: [mx1.example.org, \"*.example.net\"]\n    max_age: 1d\n")
            .unwrap()
            .unwrap();
        assert_eq!(s.listen, vec!["127.0.0.1:8443".parse().unwrap()]);
        assert_eq!(s.certificate, None);
        let (d, p) = &s.domains[0];
        assert_eq!(d, "example.com");
        assert_eq!(
            p,
            &Policy {
                mode: Mode::Testing,
                mx: vec!["mx.example.com".into()],
                max_age: 604_800
            }
        );
        assert_eq!(s.domains[1].1.mode, Mode::Enforce);
        assert_eq!(s.domains[1].1.mx, vec!["mx1.example.org", "*.example.net"]);
        assert_eq!(s.domains[1].1.max_age, 86_400);
        assert_eq!(
            s.policy_hosts(),
            vec!["mta-sts.example.com", "mta-sts.example.org"]
        );
    }

    #[test]
    fn certificate_names_a_pair_in_certs_dir() {
        let s = load("listen: [\"[::1]:443\"]\ncertificate: mta-sts\nmax_age: 31557600\ndomains: {example.com: {}}\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            s.certificate,
            Some(("/c/mta-sts.crt".into(), "/c/mta-sts.key".into()))
        );
        assert_eq!(s.domains[0].1.max_age, 31_557_600);
    }

    #[test]
    fn every_error_is_reported_with_its_position() {
        let errors = load(
            "listen: [\"127.0.0.1\"]\ncertificate: ../x\nmax_age: 31557601\ndomains:\n  example.com:\n    mode: enforcing\n    mx: [\"mx.*.example.com\", ok.example.com]\n  not_a_domain: {}\n  example.org: {max_age: 2ms}\n",
        )
        .unwrap_err();
        let want = [
            "policies/mta_sts.yaml:1:10: listen[0]: \"127.0.0.1\" has no port",
            "policies/mta_sts.yaml:2:14: certificate: \"../x\": write a certificate name",
            "policies/mta_sts.yaml:3:10: max_age: \"31557601\" is out of range",
            "policies/mta_sts.yaml:6:11: domains.example.com.mode: \"enforcing\" is not a mode",
            "policies/mta_sts.yaml:7:10: domains.example.com.mx[0]: \"mx.*.example.com\" is not an MX host name",
            "policies/mta_sts.yaml:8:3: domains: \"not_a_domain\" is not a domain name",
            "policies/mta_sts.yaml:9:26: domains.example.org.max_age: \"2ms\" is out of range",
        ];
        assert_eq!(errors.len(), want.len(), "{errors:#?}");
        for (got, want) in errors.iter().zip(want) {
            assert!(
                got.starts_with(want),
                "{got}\n  does not start with\n{want}"
            );
        }
    }

    #[test]
    fn missing_keys_and_unknown_keys() {
        let errors = load("domains:\n  example.com:\n    mode: none\n    mxs: []\n").unwrap_err();
        assert!(errors[0].contains("unknown key `mxs`"), "{errors:?}");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("missing required key `listen`")),
            "{errors:?}"
        );
        let errors = load("listen: [\"127.0.0.1:0\"]\ndomains: {}\n").unwrap_err();
        assert!(errors[0].contains("list at least one domain"), "{errors:?}");
        assert_eq!(load("# nothing yet\n"), Ok(None));
    }

    #[test]
    fn no_public_listener_needs_an_mx_list() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::write(
            dir.path().join("policies/mta_sts.yaml"),
            "listen: [\"127.0.0.1:0\"]\ndomains:\n  example.com: {mode: enforce}\n",
        )
        .unwrap();
        let mut sink = Vec::new();
        assert_eq!(
            load_mta_sts(dir.path(), Path::new("/c"), &[], &mut sink),
            None
        );
        assert!(
            sink[0]
                .render()
                .contains("domains.example.com.mx: no public listener"),
            "{sink:?}"
        );
    }
}
