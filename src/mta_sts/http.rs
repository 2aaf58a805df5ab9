//! The answer to one HTTP request of the policy endpoint, decided without I/O: the policy
//! (GET), or the TLS-RPT intake's answer to a report POST (RFC 8460 §5.4).

use std::collections::BTreeMap;

use super::MtaStsSettings;
use crate::tlsrpt::ingest::Outcome;

/// The one path a policy is served at (RFC 8461 §3.3).
pub const WELL_KNOWN_PATH: &str = "/.well-known/mta-sts.txt";

/// What is served: the policy text by policy host name (`mta-sts.example.com`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    /// Policy text by lower-case host name.
    pub by_host: BTreeMap<String, String>,
}

impl Served {
    /// The policies of `settings`.
    pub fn new(settings: &MtaStsSettings) -> Served {
        let by_host = settings
            .domains
            .iter()
            .map(|(d, p)| (MtaStsSettings::policy_host(d), p.text()))
            .collect();
        Served { by_host }
    }
}

/// An HTTP answer: status, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
    /// `Allow` of a 405: the methods the path takes.
    pub allow: Option<&'static str>,
}

impl Answer {
    fn error(status: u16, text: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain",
            body: format!("{text}\r\n"),
            allow: None,
        }
    }
}

/// The host name of a `Host` header or URI authority: no port, lower case, no trailing dot.
fn host_name(host: &str) -> String {
    let h = host.trim();
    let h = match h.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => h,
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A TLS-RPT report POST to the intake's path: read the body, then [`report_answer`].
    Report,
    /// Another method on the intake's path: 405, `Allow: POST`.
    ReportMethod,
    /// Anything else: [`answer`].
    Policy,
}

/// Routes `method path`; `report_path` is the intake's `https_path`, if any.
pub fn route(method: &str, path: &str, report_path: Option<&str>) -> Route {
    match report_path {
        Some(p) if path == p && method == "POST" => Route::Report,
        Some(p) if path == p => Route::ReportMethod,
        _ => Route::Policy,
    }
}

/// The answer to another method on the intake's path.
pub fn report_method_answer() -> Answer {
    Answer {
        allow: Some("POST"),
        ..Answer::error(405, "method not allowed: POST a report here")
    }
}

/// The answer to a report POST: 200 once stored (or stored before: the reporter must not
/// send it again), 400 for a body that is no report, 413 past the size limits, 503 when it
/// could not be stored (the reporter retries).
pub fn report_answer(outcome: &Outcome) -> Answer {
    match outcome {
        Outcome::Accepted { .. } => Answer::error(200, "report accepted"),
        Outcome::Duplicate { .. } => Answer::error(200, "report received before"),
        Outcome::Malformed(why) => Answer::error(400, &format!("not a valid TLS report: {why}")),
        Outcome::TooLarge | Outcome::Bomb => Answer::error(413, "report too large"),
        Outcome::StoreFailed(_) => Answer::error(503, "report not stored, try again later"),
    }
}

/// Answers `method path` for `host` (`None` when the request named no host): the policy
/// for a known host at [`WELL_KNOWN_PATH`], 405 for anything but GET, 404 otherwise.
pub fn answer(method: &str, path: &str, host: Option<&str>, served: &Served) -> Answer {
    if method != "GET" {
        return Answer {
            allow: Some("GET"),
            ..Answer::error(405, "method not allowed")
        };
    }
    if path != WELL_KNOWN_PATH {
        return Answer::error(404, "not found");
    }
    match host.map(host_name).and_then(|h| served.by_host.get(&h)) {
        Some(text) => Answer {
            status: 200,
            content_type: "text/plain",
            body: text.clone(),
            allow: None,
        },
        None => Answer::error(404, "no MTA-STS policy for this host"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mta_sts::{Mode, Policy};

    fn served() -> Served {
        Served::new(&MtaStsSettings {
            listen: vec![],
            certificate: None,
            domains: vec![(
                "example.com".into(),
                Policy {
                    mode: Mode::Testing,
                    mx: vec!["mx.example.com".into()],
                    max_age: 86_400,
                },
            )],
        })
    }

    #[test]
    fn known_host_gets_its_policy_with_or_without_port() {
        let s = served();
        let want = "version: STSv1\r\nmode: testing\r\nmx: mx.example.com\r\nmax_age: 86400\r\n";
        for host in [
            "mta-sts.example.com",
            "MTA-STS.Example.COM:8443",
            "mta-sts.example.com.",
        ] {
            let a = answer("GET", WELL_KNOWN_PATH, Some(host), &s);
            assert_eq!(
                (a.status, a.content_type, a.body.as_str()),
                (200, "text/plain", want)
            );
        }
    }

    #[test]
    fn other_hosts_paths_and_methods_are_refused() {
        let s = served();
        assert_eq!(
            answer("GET", WELL_KNOWN_PATH, Some("example.com"), &s).status,
            404
        );
        assert_eq!(answer("GET", WELL_KNOWN_PATH, None, &s).status, 404);
        assert_eq!(
            answer("GET", "/", Some("mta-sts.example.com"), &s).status,
            404
        );
        assert_eq!(
            answer(
                "GET",
                "/.well-known/mta-sts.txt/",
                Some("mta-sts.example.com"),
                &s
            )
            .status,
            404
        );
        assert_eq!(
            answer("POST", WELL_KNOWN_PATH, Some("mta-sts.example.com"), &s).status,
            405
        );
        assert_eq!(
            answer("HEAD", WELL_KNOWN_PATH, Some("mta-sts.example.com"), &s).status,
            405
        );
    }
}
