//! `mxgate recipients check ADDRESS`: what a configuration answers for one recipient and
//! why — the listener's RAT entry (as `check_rcpt`'s first stage decides it), the entry's
//! validation method with its route or directory, the breaker, the answer (from the cache,
//! a lookup now, or the cache file when no server runs) and the reply a client gets.
//!
//! The running server answers through the control socket with its own cache, pools and
//! breakers ([`check_live`]); without one the CLI answers from the configuration directory
//! and the cache file, and probes only when asked to ([`check_offline`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::explain::{accepted, describe_method, explain, method_id, pattern_text, Decision};
use super::{utc, LiveRecipients, RecipientView};
use crate::config::model::Config;
use crate::policy::rat::RecipientAccessTable;
use crate::smtp::reply::{Enhanced, Reply};
use crate::validate::cache::{CacheSettings, Hit, VerdictCache};
use crate::validate::destination::{Checked, Source, SystemClocks, ValidationClock};
use crate::validate::rule::{OnTempFail, RecipientValidation, ValidationMethod, ValidationRequest};
use crate::validate::service::{transition_text, Validator, ValidatorConfig};
use crate::validate::{TempFailCause, Verdict};

/// One `recipients check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRequest {
    /// The recipient address (`<>` optional).
    pub address: String,
    /// The listener whose RAT decides (default: the first listener with a RAT).
    pub listener: Option<String>,
    /// Ask the directory even when the cache has an answer (the answer is stored).
    pub no_cache: bool,
}

impl CheckRequest {
    /// The control-socket line: `validate ADDRESS [nocache] [listener NAME]` (the listener
    /// last: its name may hold spaces).
    pub fn to_line(&self) -> String {
        let mut s = format!("validate {}", self.address);
        if self.no_cache {
            s.push_str(" nocache");
        }
        if let Some(l) = &self.listener {
            s.push_str(" listener ");
            s.push_str(l);
        }
        s
    }

    /// Parses the words after `validate`.
    pub fn parse(rest: &str) -> Result<Self, String> {
        let usage = || "usage: validate ADDRESS [nocache] [listener NAME]".to_string();
        let rest = rest.trim();
        let (address, mut tail) = rest
            .split_once(char::is_whitespace)
            .map_or((rest, ""), |(a, t)| (a, t.trim_start()));
        if address.is_empty() {
            return Err(usage());
        }
        let mut req = CheckRequest {
            address: address.to_string(),
            listener: None,
            no_cache: false,
        };
        while !tail.is_empty() {
            let (word, rest) = tail
                .split_once(char::is_whitespace)
                .map_or((tail, ""), |(w, r)| (w, r.trim_start()));
            match word {
                "nocache" => req.no_cache = true,
                "listener" if !rest.is_empty() => {
                    req.listener = Some(rest.trim_end().to_string());
                    break;
                }
                _ => return Err(usage()),
            }
            tail = rest;
        }
        Ok(req)
    }
}

/// Lines of `key value`, the keys aligned (like `mxgate hat trace`).
#[derive(Debug, Default)]
struct Report(String);

impl Report {
    fn line(&mut self, key: &str, value: impl std::fmt::Display) {
        self.0.push_str(&format!("{key:<10}{value}\n"));
    }
}

/// Where an answer comes from.
enum Asker<'a> {
    /// The running server's validator.
    Server(&'a Validator),
    /// A validator of the CLI's own (no server runs; `--no-cache`).
    Cli(Validator),
    /// The cache file (no server runs), read with the configuration's cache settings.
    File {
        path: PathBuf,
        settings: CacheSettings,
    },
}

/// The reply of a validated recipient.
fn reply_for(rule: &RecipientValidation, accept: Option<&Reply>, verdict: Verdict) -> String {
    match (verdict, rule.on_tempfail) {
        (Verdict::Valid, _) => accepted(accept).to_string(),
        (Verdict::Invalid, _) => rule.invalid_reply.to_string(),
        (Verdict::TempFail(_), OnTempFail::TempFail) => rule.tempfail_reply.to_string(),
        (Verdict::TempFail(_), OnTempFail::Accept) => format!(
            "{} (accepted unverified: on_tempfail accept)",
            accepted(accept)
        ),
    }
}

fn verdict_text(v: Verdict) -> String {
    match v {
        Verdict::TempFail(cause) => format!("tempfail ({cause})"),
        v => v.label().to_string(),
    }
}

/// The cache entry answering for `address` under `id`: its own, or its domain's catch-all
/// finding (`@domain`, valid).
fn cached(cache: &VerdictCache, id: &str, address: &str, now: u64) -> Option<(Hit, bool)> {
    if let Some(h) = cache.get(&cache.key(id, address), now) {
        return Some((h, false));
    }
    let domain = address.rsplit_once('@')?.1;
    let h = cache.get(&cache.key(id, &format!("@{domain}")), now)?;
    (h.verdict == Verdict::Valid).then_some((h, true))
}

fn cached_text((h, catch_all): (Hit, bool), address: &str) -> String {
    let what = match catch_all {
        true => format!(
            "valid for the whole domain (catch-all finding @{})",
            address.rsplit_once('@').map_or("", |(_, d)| d)
        ),
        false => h.verdict.label().to_string(),
    };
    format!(
        "{what}, stored {}, expires {}",
        utc(h.stored),
        utc(h.expires)
    )
}

/// Answers a callahead or ldap rule: the breaker, answer, detail, cached and reply lines.
async fn answer(
    r: &mut Report,
    asker: &Asker<'_>,
    id: Option<&str>,
    req: &ValidationRequest,
    accept: Option<&Reply>,
    no_cache: bool,
) {
    match asker {
        Asker::File { path, settings } => from_file(r, path, settings, id, req, accept),
        Asker::Server(v) => lookup(r, v, false, id, req, accept, no_cache).await,
        Asker::Cli(v) => lookup(r, v, true, id, req, accept, true).await,
    }
}

/// The answer of the cache file, nothing asked (no server runs).
fn from_file(
    r: &mut Report,
    path: &Path,
    settings: &CacheSettings,
    id: Option<&str>,
    req: &ValidationRequest,
    accept: Option<&Reply>,
) {
    let (rule, now) = (&req.rule, SystemClocks.unix());
    let cache = VerdictCache::new(settings.clone());
    let loaded = crate::validate::persist::load(&cache, path, now, |_| true);
    r.line("breaker", "unknown (no running server)");
    let hit = id.and_then(|id| cached(&cache, id, &req.address, now));
    match (loaded, hit) {
        (Ok(_), Some(hit)) => {
            let verdict = hit.0.verdict;
            r.line(
                "answer",
                format!(
                    "{}, from the cache file {} (nothing asked)",
                    verdict.label(),
                    path.display()
                ),
            );
            r.line("cached", cached_text(hit, &req.address));
            r.line("reply", reply_for(rule, accept, verdict));
        }
        (loaded, _) => {
            let why = match loaded {
                Ok(_) => format!("not in the cache file {}", path.display()),
                Err(e) => format!("the cache file cannot be read ({e})"),
            };
            r.line(
                "answer",
                format!("unknown: {why}; the server asks at the first RCPT (--no-cache probes from here)"),
            );
            let tempfail = reply_for(rule, accept, Verdict::TempFail(TempFailCause::Timeout));
            r.line(
                "reply",
                format!(
                    "{} if valid, {} if invalid, {tempfail} without an answer",
                    accepted(accept),
                    rule.invalid_reply
                ),
            );
        }
    }
}

/// The answer of `v` (the server's validator, or the CLI's own when `from_cli`).
async fn lookup(
    r: &mut Report,
    v: &Validator,
    from_cli: bool,
    id: Option<&str>,
    req: &ValidationRequest,
    accept: Option<&Reply>,
    no_cache: bool,
) {
    let checked: Checked = match no_cache {
        false => v.validate(req).await,
        true => v.validate_uncached(req).await,
    };
    if let Some(id) = id {
        let state = match v.breakers().into_iter().find(|(d, _)| d == id) {
            Some((_, true)) => "open: lookups answer tempfail at once until its cool-down ends",
            Some((_, false)) => "closed",
            None => "closed (not used yet)",
        };
        match checked.transition {
            Some(t) => r.line(
                "breaker",
                format!("{state} ({} by this lookup)", transition_text(t)),
            ),
            None => r.line("breaker", state),
        }
    }
    let how = match checked.source {
        Source::Cache { .. } => "from the cache",
        Source::Breaker => "nothing asked (breaker open)",
        Source::Lookup if from_cli => {
            "probed from the CLI now (no running server; its cache file is not changed)"
        }
        Source::Lookup if no_cache => "asked now (cache bypassed)",
        Source::Lookup => "asked now",
    };
    let verdict = checked.answer.verdict;
    r.line("answer", format!("{}, {how}", verdict_text(verdict)));
    if !matches!(checked.source, Source::Cache { .. }) {
        r.line("detail", &checked.answer.detail);
    }
    if from_cli && checked.source == Source::Lookup {
        r.line(
            "cached",
            "not stored (probed from the CLI, no running server)",
        );
    } else if let Some(id) = id {
        match cached(v.cache(), id, &req.address, SystemClocks.unix()) {
            Some(hit) => r.line("cached", cached_text(hit, &req.address)),
            None if verdict.is_temporary() => {
                r.line("cached", "no entry (tempfails are never cached)")
            }
            None => r.line("cached", "no entry"),
        }
    }
    r.line("reply", reply_for(req.rule.as_ref(), accept, verdict));
}

/// The report of `req` on `view`, answered by `asker`; `server` is the first line.
async fn report(
    view: &RecipientView,
    req: &CheckRequest,
    server: String,
    asker: Asker<'_>,
) -> Result<String, String> {
    let ex = explain(view, &req.address, req.listener.as_deref())?;
    let mut r = Report::default();
    let l = ex.listener;
    r.line("server", server);
    r.line(
        "listener",
        match &l.rat {
            Some(rat) => format!("{} ({}, RAT {})", l.name, l.kind.as_str(), rat.name),
            None => format!("{} ({}, no RAT)", l.name, l.kind.as_str()),
        },
    );
    r.line("address", &ex.address);
    let entry = |index: usize, action: &str| {
        let Some(rat) = &l.rat else {
            return String::new();
        };
        let pattern = rat.entries.get(index).map(|e| pattern_text(&e.pattern));
        let at = view
            .position(&rat.name, index)
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        format!(
            "entry {index} {}{at}, action {action}",
            pattern.unwrap_or_default()
        )
    };
    let default_refusal = RecipientAccessTable::default_reply();
    match &ex.decision {
        Decision::NoRat => {
            r.line("entry", format!("none: listener {} has no RAT", l.name));
            r.line(
                "answer",
                "decided by the client's mail-flow policy: relay accepts any recipient, accept refuses every one",
            );
            r.line(
                "reply",
                format!(
                    "{} (relay policies), else {default_refusal}",
                    accepted(None)
                ),
            );
        }
        Decision::RelayTrick => {
            r.line(
                "entry",
                "none: the address form (source route, %-hack, quoted @, literal) is refused before the RAT",
            );
            r.line(
                "answer",
                "refused (relay attempt), unless the client's policy relays",
            );
            r.line(
                "reply",
                Reply::new(550, Enhanced(5, 7, 1), "Relay access denied"),
            );
        }
        Decision::Postmaster => {
            r.line("entry", "none: <postmaster> is accepted past the RAT");
            r.line("answer", "accepted without validation");
            r.line("reply", accepted(None));
        }
        Decision::Refused { index, reply } => {
            let text = match index {
                Some(i) => entry(*i, "reject"),
                None => "default (no entry matched), action reject".to_string(),
            };
            r.line("entry", text);
            r.line("answer", "refused by the RAT (nothing validated)");
            r.line("reply", reply);
        }
        Decision::Accepted {
            index,
            reply,
            rule: None,
        } => {
            r.line("entry", entry(*index, "accept"));
            r.line("validate", "none");
            r.line("answer", "accepted without validation");
            r.line("reply", accepted(reply.as_ref()));
        }
        Decision::Accepted {
            index,
            reply,
            rule: Some(rule),
        } => {
            let domain = ex.address.rsplit_once('@').map_or("", |(_, d)| d);
            r.line("entry", entry(*index, "accept"));
            r.line("validate", describe_method(view, rule, domain));
            if let ValidationMethod::List(list) = &rule.method {
                // Decided in memory at RCPT: the answer is the server's too.
                let verdict = list.lookup(&ex.address);
                let shown = view.shown_path(list.path());
                let why = match verdict {
                    Verdict::Valid if list.lookup(&format!("@{domain}")) == Verdict::Valid => {
                        format!("catch-all domain @{domain} listed in {shown}")
                    }
                    Verdict::Valid => format!("listed in {shown}"),
                    _ => format!("not listed in {shown}"),
                };
                r.line("answer", format!("{} ({why})", verdict.label()));
                r.line("reply", reply_for(rule, reply.as_ref(), verdict));
            } else {
                let id = method_id(view, &rule.method, domain);
                let vreq = ValidationRequest {
                    address: ex.address.clone(),
                    rule: rule.clone(),
                };
                answer(
                    &mut r,
                    &asker,
                    id.as_deref(),
                    &vreq,
                    reply.as_ref(),
                    req.no_cache,
                )
                .await;
            }
        }
    }
    Ok(r.0)
}

/// The running server's answer (the control socket's `validate` verb).
pub(crate) async fn check_live(
    live: &LiveRecipients,
    req: &CheckRequest,
) -> Result<String, String> {
    let server = format!(
        "running (pid {}), configuration {}",
        std::process::id(),
        live.view.dir.display()
    );
    report(&live.view, req, server, Asker::Server(&live.validator)).await
}

/// The answer without a running server (`no_server` says why none answered): from
/// `config` and the cache file under its spool, or with `--no-cache` a probe from here.
pub async fn check_offline(
    config: &Config,
    req: &CheckRequest,
    no_server: &str,
) -> Result<String, String> {
    let view = RecipientView::new(config);
    let server = format!(
        "not running ({no_server}): answering from the configuration in {}",
        config.dir.display()
    );
    let asker = if req.no_cache {
        let tls = crate::app::outbound_tls(config).map_err(|e| e.to_string())?;
        let validator = Validator::new(
            ValidatorConfig {
                settings: config.validation.clone(),
                routes: config.routes.clone(),
                helo_name: crate::app::delivery_hostname(config),
                destinations: config.destinations.clone(),
                tls: Arc::new(tls),
            },
            Arc::new(VerdictCache::new(config.validation.cache.clone())),
            Arc::new(SystemClocks),
        );
        Asker::Cli(validator)
    } else {
        Asker::File {
            path: crate::app::validation::cache_path(&config.global.spool_dir),
            settings: config.validation.cache.clone(),
        }
    };
    report(&view, req, server, asker).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_the_socket_line() {
        let req = CheckRequest {
            address: "bob@example.com".into(),
            listener: Some("Data 1".into()),
            no_cache: true,
        };
        let line = req.to_line();
        assert_eq!(line, "validate bob@example.com nocache listener Data 1");
        assert_eq!(
            CheckRequest::parse(line.strip_prefix("validate ").unwrap()),
            Ok(req)
        );
        assert!(CheckRequest::parse("").is_err());
        assert!(CheckRequest::parse("a@b.example bogus").is_err());
        assert!(CheckRequest::parse("a@b.example listener").is_err());
    }
}
