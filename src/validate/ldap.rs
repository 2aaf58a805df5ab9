//! The `ldap: NAME` method: an LDAP accept query, as ESA's. Search `base` with `filter`, its
//! placeholders `{address}`, `{local}` and `{domain}` replaced by the recipient's parts
//! escaped for a filter (RFC 4515), over bound connections kept open (up to
//! `max_connections`; a broken one is replaced).
//!
//! Result codes: 0 (or 4, size limit exceeded) with an entry → Valid; 0 without an entry →
//! Invalid; anything else → TempFail. A search whose bind lacks read rights answers 32
//! (noSuchObject): taking that for "no such user" would refuse everyone.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldap3::{ldap_escape, Ldap, LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchOptions};
use tokio::sync::Semaphore;
use tokio::time::timeout;

use super::verdict::{Answer, TempFailCause, Verdict};

/// One directory of `ldap:` in `policies/validation.yaml` (the config loader builds it).
#[derive(Clone)]
pub struct LdapSettings {
    /// The directory's name (`ldap: corp`), in the cache key and the log.
    pub name: String,
    /// `ldap://host:389` or `ldaps://host:636`.
    pub url: String,
    /// StartTLS on an `ldap://` URL.
    pub starttls: bool,
    /// TLS client configuration (our roots or the CA file); `None`: ldap3's default.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Bind DN; empty for an anonymous search.
    pub bind_dn: String,
    /// Bind password (read from `password_file`, never from the YAML).
    pub password: String,
    /// Search base.
    pub base: String,
    /// Filter with `{address}`, `{local}`, `{domain}`.
    pub filter: String,
    /// Bound on one lookup (connect, bind and search).
    pub timeout: Duration,
    /// Connections kept at most; also the lookups at once.
    pub max_connections: usize,
}

impl fmt::Debug for LdapSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password stays out of debug output (and so out of logs).
        f.debug_struct("LdapSettings")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("starttls", &self.starttls)
            .field("bind_dn", &self.bind_dn)
            .field("base", &self.base)
            .field("filter", &self.filter)
            .field("timeout", &self.timeout)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

/// The filter for `address`: placeholders replaced in one pass (a local part that reads
/// `{domain}` is not expanded again), each value escaped.
pub fn build_filter(template: &str, address: &str) -> String {
    let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
    let mut out = String::with_capacity(template.len() + address.len() * 2);
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (value, len) = if tail.starts_with("{address}") {
            (Some(address), "{address}".len())
        } else if tail.starts_with("{local}") {
            (Some(local), "{local}".len())
        } else if tail.starts_with("{domain}") {
            (Some(domain), "{domain}".len())
        } else {
            (None, 1)
        };
        match value {
            Some(v) => out.push_str(&ldap_escape(v)),
            None => out.push('{'),
        }
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

/// The verdict of a search result code and whether an entry came back.
pub fn classify(rc: u32, has_entry: bool) -> Verdict {
    match (rc, has_entry) {
        (0 | 4, true) => Verdict::Valid,
        (0, false) => Verdict::Invalid,
        _ => Verdict::TempFail(TempFailCause::LdapResult),
    }
}

/// An LDAP directory with its kept-open bound connections.
#[derive(Debug)]
pub struct LdapDirectory {
    settings: LdapSettings,
    permits: Semaphore,
    idle: Mutex<Vec<Ldap>>,
}

/// A failed step, with the cause it maps to.
struct Failure(TempFailCause, String);

fn ldap_failure(stage: &str, e: LdapError) -> Failure {
    let cause = match &e {
        LdapError::Timeout { .. } => TempFailCause::Timeout,
        LdapError::LdapResult { .. } if stage == "bind" => TempFailCause::LdapBind,
        LdapError::LdapResult { .. } => TempFailCause::LdapResult,
        _ => TempFailCause::LdapDown,
    };
    Failure(cause, format!("{stage}: {e}"))
}

impl LdapDirectory {
    /// A directory; connections are opened on the first lookups.
    pub fn new(settings: LdapSettings) -> Self {
        LdapDirectory {
            permits: Semaphore::new(settings.max_connections.max(1)),
            settings,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The method id of the cache key: `ldap:<NAME>`.
    pub fn method_id(&self) -> String {
        format!("ldap:{}", self.settings.name)
    }

    /// Looks `address` up; the answer's detail names the directory's URL (log only).
    pub async fn lookup(&self, address: &str) -> Answer {
        let url = &self.settings.url;
        let limit = self.settings.timeout;
        let work = async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| Failure(TempFailCause::Shed, "closed".into()))?;
            // A kept connection may have been closed by the server meanwhile: a connection
            // failure on it is retried once on a new connection (an LDAP result is not).
            if let Some(ldap) = self.take_idle() {
                match self.search(ldap, address).await {
                    Err(Failure(TempFailCause::LdapDown, _)) => {}
                    other => return other,
                }
            }
            let ldap = self.connect().await?;
            self.search(ldap, address).await
        };
        match timeout(limit, work).await {
            Ok(Ok((verdict, detail))) => Answer::new(verdict, format!("{url}: {detail}")),
            Ok(Err(Failure(cause, detail))) => Answer::temp(cause, format!("{url}: {detail}")),
            Err(_) => Answer::temp(
                TempFailCause::Timeout,
                format!("{url}: no answer within {limit:?}"),
            ),
        }
    }

    fn take_idle(&self) -> Option<Ldap> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut l) = idle.pop() {
            if !l.is_closed() {
                return Some(l);
            }
        }
        None
    }

    /// Opens and binds a connection.
    async fn connect(&self) -> Result<Ldap, Failure> {
        let s = &self.settings;
        let mut cs = LdapConnSettings::new()
            .set_conn_timeout(s.timeout)
            .set_starttls(s.starttls);
        if let Some(tls) = &s.tls {
            cs = cs.set_config(tls.clone());
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(cs, &s.url)
            .await
            .map_err(|e| ldap_failure("connect", e))?;
        tokio::spawn(async move {
            // Ends when the last handle is dropped or the server closes the connection.
            let _ = conn.drive().await;
        });
        if !s.bind_dn.is_empty() {
            ldap.with_timeout(s.timeout)
                .simple_bind(&s.bind_dn, &s.password)
                .await
                .and_then(|r| r.success())
                .map_err(|e| ldap_failure("bind", e))?;
        }
        Ok(ldap)
    }

    /// Searches on `ldap`; keeps it for the next lookup when it answered.
    async fn search(&self, mut ldap: Ldap, address: &str) -> Result<(Verdict, String), Failure> {
        let s = &self.settings;
        let filter = build_filter(&s.filter, address);
        let res = ldap
            .with_search_options(SearchOptions::new().sizelimit(1))
            .with_timeout(s.timeout)
            .search(&s.base, Scope::Subtree, &filter, vec!["1.1"])
            .await
            .map_err(|e| ldap_failure("search", e))?;
        let (entries, result) = (res.0, res.1);
        let verdict = classify(result.rc, !entries.is_empty());
        let detail = match verdict {
            Verdict::Valid => format!("{filter}: found"),
            Verdict::Invalid => format!("{filter}: no entry"),
            Verdict::TempFail(_) => format!("{filter}: result code {} {}", result.rc, result.text),
        };
        if let Verdict::TempFail(c) = verdict {
            return Err(Failure(c, detail));
        }
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ldap);
        Ok((verdict, detail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_escaped_and_expanded_once() {
        let f = "(|(mail={address})(uid={local})(o={domain}))";
        assert_eq!(
            build_filter(f, "alice@example.test"),
            "(|(mail=alice@example.test)(uid=alice)(o=example.test))"
        );
        assert_eq!(
            build_filter(f, "a*)(uid=*@example.test"),
            "(|(mail=a\\2a\\29\\28uid=\\2a@example.test)(uid=a\\2a\\29\\28uid=\\2a)(o=example.test))"
        );
        // A local part that reads like a placeholder stays text.
        assert_eq!(
            build_filter("(uid={local}{domain})", "{domain}@x.test"),
            "(uid={domain}x.test)"
        );
        assert_eq!(build_filter("(a={other})", "u@d"), "(a={other})");
    }

    #[test]
    fn only_success_codes_answer() {
        assert_eq!(classify(0, true), Verdict::Valid);
        assert_eq!(classify(4, true), Verdict::Valid);
        assert_eq!(classify(0, false), Verdict::Invalid);
        for rc in [4, 32, 49, 50, 51, 52, 10] {
            assert_eq!(
                classify(rc, false),
                Verdict::TempFail(TempFailCause::LdapResult),
                "rc {rc}"
            );
        }
    }
}
